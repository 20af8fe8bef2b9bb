#!/usr/bin/env bash
# One backup made as the seed's postgres-backup.sh made them, with stock tools only (no quankey code):
#   pg_dump -Fc | gzip | openssl enc -aes-256-cbc -salt <ENC_OPTIONS> -pass env:SEED_PASSPHRASE
# then its .meta (the seed's JSON) and both uploaded with the AWS CLI to the seed's flat layout:
#   <S3_PREFIX>/backups/postgresql/<name>.encrypted and <S3_PREFIX>/metadata/<name>.meta
#
#   seed_backup.sh NAME [openssl enc options, default -pbkdf2]     e.g. seed_backup.sh quankey_backup_20250809_030000 -md md5
#
# Environment: PG_BIN (pg_dump's directory), AWS (the aws executable), DB_HOST, DB_PORT, DB_USER, PGPASSWORD,
# DB_NAME, S3_BUCKET, S3_PREFIX (without a trailing /), S3_ENDPOINT_URL, AWS_* credentials, SEED_PASSPHRASE.
set -euo pipefail

name=$1
shift
enc_options=("$@")
((${#enc_options[@]})) || enc_options=(-pbkdf2)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PG_BIN/pg_dump" -Fc -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" \
    | gzip \
    | openssl enc -aes-256-cbc -salt "${enc_options[@]}" -pass env:SEED_PASSPHRASE >"$work/$name.encrypted"
size=$(wc -c <"$work/$name.encrypted")
sum=$(sha256sum "$work/$name.encrypted" | cut -d' ' -f1)
cat >"$work/$name.meta" <<META
{
  "backup_type": "postgresql_full",
  "database": "$DB_NAME",
  "timestamp": "${name##*_backup_}",
  "size_bytes": $size,
  "checksum_sha256": "$sum",
  "encryption": "aes-256-cbc",
  "format": "pg_dump_custom",
  "retention_days": 30,
  "quantum_safe": true
}
META
"$AWS" --endpoint-url "$S3_ENDPOINT_URL" s3 cp "$work/$name.encrypted" \
    "s3://$S3_BUCKET/$S3_PREFIX/backups/postgresql/$name.encrypted" --only-show-errors
"$AWS" --endpoint-url "$S3_ENDPOINT_URL" s3 cp "$work/$name.meta" \
    "s3://$S3_BUCKET/$S3_PREFIX/metadata/$name.meta" --only-show-errors
echo "$name"
