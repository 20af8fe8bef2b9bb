#!/usr/bin/env bash
#
# Quankey backup setup: installs postgres-backup.sh as /usr/local/bin/quankey-backup, creates
# /etc/quankey/backup.env (mode 600: edit it with your AWS credentials), /var/log/quankey, and the daily
# cron job (0 3 * * *, BACKUP_CRON to change it) in root's crontab.
#
# The seed's scripts/backup/backup-cron-setup.sh as its README describes it (molecule/seed_takeover runs it).
set -euo pipefail

[[ $EUID -eq 0 ]] || { echo "Run as root: sudo $0" >&2; exit 1; }
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BACKUP_CRON="${BACKUP_CRON:-0 3 * * *}"
COMMAND=/usr/local/bin/quankey-backup
LOG_FILE=/var/log/quankey/backup.log
ENV_FILE=/etc/quankey/backup.env

install -m 0755 "$SCRIPT_DIR/postgres-backup.sh" "$COMMAND"
mkdir -p /etc/quankey /var/log/quankey
if [[ ! -f "$ENV_FILE" ]]; then
    (
        umask 077
        cat >"$ENV_FILE" <<'ENV'
# Quankey backup configuration (scripts/backup/README.md)
# Database
DB_HOST=localhost
DB_PORT=5432
DB_NAME=quankey_prod
DB_USER=quankey
PGPASSWORD=your_db_password

# AWS S3
AWS_ACCESS_KEY_ID=AKIA...
AWS_SECRET_ACCESS_KEY=secret...
S3_BUCKET=quankey-backups-prod

# Security
BACKUP_ENCRYPTION_KEY=32_byte_encryption_key
BACKUP_RETENTION_DAYS=30
ENV
    )
fi
chmod 600 "$ENV_FILE"

JOB="$BACKUP_CRON $COMMAND >> $LOG_FILE 2>&1"
{ crontab -l 2>/dev/null | grep -v -F "$COMMAND" || true; echo "$JOB"; } | crontab -
echo "✅ Backups scheduled: $JOB"
echo "Next: edit $ENV_FILE, then test with: sudo $COMMAND"
if ! command -v aws >/dev/null 2>&1; then
    echo "⚠️  AWS CLI not found: install it before the first backup"
fi
