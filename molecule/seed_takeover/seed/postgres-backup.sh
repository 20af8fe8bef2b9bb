#!/usr/bin/env bash
#
# Quankey PostgreSQL backup: pg_dump (custom format) | gzip | openssl enc -aes-256-cbc -salt -pbkdf2, a SHA-256
# checksum and a .meta, both uploaded to S3 with the AWS CLI (backups/postgresql/ and metadata/), then the
# backups older than BACKUP_RETENTION_DAYS deleted. backup-cron-setup.sh installs it as /usr/local/bin/quankey-backup
# and cron runs it daily at 03:00, appending to /var/log/quankey/backup.log.
#
# The seed's scripts/backup/postgres-backup.sh as its README describes it: what a host the collection takes over
# runs today (molecule/seed_takeover builds such a host). Settings: /etc/quankey/backup.env (CONFIG_FILE).
set -euo pipefail

CONFIG_FILE="${CONFIG_FILE:-/etc/quankey/backup.env}"

log() { echo "[$(date '+%Y-%m-%d %H:%M:%S')] $*"; }
fail() { log "❌ $*"; exit 1; }

[[ -r "$CONFIG_FILE" ]] || fail "Configuration not found: $CONFIG_FILE"
set -a
# shellcheck source=/dev/null
source "$CONFIG_FILE"
set +a

DB_HOST="${DB_HOST:-localhost}"
DB_PORT="${DB_PORT:-5432}"
BACKUP_RETENTION_DAYS="${BACKUP_RETENTION_DAYS:-30}"
[[ -n "${DB_NAME:-}" && -n "${DB_USER:-}" ]] || fail "DB_NAME and DB_USER must be set in $CONFIG_FILE"
[[ -n "${S3_BUCKET:-}" ]] || fail "S3_BUCKET not set"
[[ -n "${BACKUP_ENCRYPTION_KEY:-}" ]] || fail "Encryption key not set"
command -v aws >/dev/null 2>&1 || fail "AWS CLI not found"
command -v pg_dump >/dev/null 2>&1 || fail "pg_dump not found"

TIMESTAMP="$(date +%Y%m%d_%H%M%S)"
BACKUP_NAME="quankey_backup_${TIMESTAMP}"
S3_PATH="s3://${S3_BUCKET}"
WORK_DIR="$(mktemp -d /tmp/quankey-backup.XXXXXX)"
trap 'rm -rf "$WORK_DIR"' EXIT

log "Starting backup of ${DB_NAME} (${DB_HOST}:${DB_PORT}) as ${BACKUP_NAME}"
pg_dump -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" -Fc \
    | gzip \
    | openssl enc -aes-256-cbc -salt -pbkdf2 -pass env:BACKUP_ENCRYPTION_KEY \
    >"$WORK_DIR/$BACKUP_NAME.encrypted" \
    || fail "PostgreSQL dump or encryption failed"

SIZE=$(stat -c %s "$WORK_DIR/$BACKUP_NAME.encrypted")
CHECKSUM=$(sha256sum "$WORK_DIR/$BACKUP_NAME.encrypted" | cut -d' ' -f1)
cat >"$WORK_DIR/$BACKUP_NAME.meta" <<META
{
  "backup_type": "postgresql_full",
  "database": "${DB_NAME}",
  "timestamp": "${TIMESTAMP}",
  "size_bytes": ${SIZE},
  "checksum_sha256": "${CHECKSUM}",
  "encryption": "aes-256-cbc",
  "format": "pg_dump_custom",
  "retention_days": ${BACKUP_RETENTION_DAYS},
  "quantum_safe": true
}
META

aws s3 cp "$WORK_DIR/$BACKUP_NAME.encrypted" "$S3_PATH/backups/postgresql/$BACKUP_NAME.encrypted" \
    --storage-class STANDARD_IA --only-show-errors || fail "S3 upload failed (check the IAM policy)"
aws s3 cp "$WORK_DIR/$BACKUP_NAME.meta" "$S3_PATH/metadata/$BACKUP_NAME.meta" \
    --only-show-errors || fail "S3 upload of the metadata failed"
log "✅ Uploaded ${BACKUP_NAME}.encrypted (${SIZE} bytes, sha256 ${CHECKSUM})"

# Retention: delete the backups (and their .meta) older than BACKUP_RETENTION_DAYS
CUTOFF=$(date -d "-${BACKUP_RETENTION_DAYS} days" +%Y%m%d)
aws s3 ls "$S3_PATH/backups/postgresql/" \
    | awk '{print $4}' \
    | { grep -E '^quankey_backup_[0-9]{8}_[0-9]{6}\.encrypted$' || true; } \
    | while read -r file; do
        day="${file#quankey_backup_}"
        day="${day%%_*}"
        if [[ "$day" < "$CUTOFF" ]]; then
            aws s3 rm "$S3_PATH/backups/postgresql/$file" --only-show-errors
            aws s3 rm "$S3_PATH/metadata/${file%.encrypted}.meta" --only-show-errors
            log "Deleted old backup $file"
        fi
    done

log "✅ Backup ${BACKUP_NAME} completed"
