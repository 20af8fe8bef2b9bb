# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Look at and rearrange the test bucket behind the modules' back (integration tests only).

    python s3_tool.py list  --host H           JSON: every object of host H with key, size, storage class and ETag
    python s3_tool.py purge --host H           delete every key and open upload of host H
    python s3_tool.py age   --host H --db D --hours N
        make the newest backup of H/D N hours older, honestly: its object and metadata move to the keys
        of the earlier time and the metadata's own times and keys are rewritten, its data key re-wrapped
        for the new name (format version 2 binds the name into the wrap) and the metadata re-signed, when
        the test bed's BACKUP_ENCRYPTION_KEY made them (docs/FORMAT.md, "Format version 2" and "Metadata
        signature"); the old keys are deleted
    python s3_tool.py tamper --host H --db D
        what someone who can write the bucket but holds no key could do: change the newest backup's
        checksum_sha256 in its metadata (the signature is left as it was)
    python s3_tool.py add-field --host H --db D --field F --value V
        the same kind of writer adds a field to the newest backup's metadata (e.g. "layout": "seed", to pass
        a signed backup off as one of the seed's); the signature is left as it was
    python s3_tool.py copy --host H --db D --to-host H2
        the same kind of writer copies the newest backup of H/D (object and metadata, byte for byte) to the
        place of host H2, same database and name, as if H2 had made it

Deliberately independent of the engine (plain boto3 and the documented key layout), so it checks the
modules rather than repeating them. Reads S3_BUCKET, S3_ENDPOINT_URL and AWS_* from the environment.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import struct
import sys

import boto3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NAME_RE = re.compile(r"^(?P<stem>.+)_backup_(?P<ts>\d{8}_\d{6})$")
TS_FORMAT = "%Y%m%d_%H%M%S"


def _client():
    return boto3.client("s3", endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
                        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def _prefixes(host, db=None):
    tail = host + "/" + (db + "/" if db else "")
    return ["backups/postgresql/" + tail, "metadata/" + tail]


def _list(client, bucket, prefix):
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def _master_key():
    """The test bed's master key (BACKUP_ENCRYPTION_KEY) and its key id (FORMAT.md, "Key id")."""
    master = base64.b64decode(os.environ.get("BACKUP_ENCRYPTION_KEY", ""))
    return master, "qk1-" + hashlib.sha256(b"quankey-backup/v1 key-id\x00" + master).hexdigest()[:16]


def _binding(host, database, name):
    """The backup binding of format version 2 (FORMAT.md, "What is bound")."""
    binding = b"quankey-backup/v2 backup\x00"
    for part in (host, database, name):
        encoded = part.encode("utf-8")
        binding += struct.pack(">H", len(encoded)) + encoded
    return binding


def _rewrap(envelope, host, database, old_name, new_name):
    """A version 2 master-key envelope bound to ``new_name`` instead of ``old_name``, when the test bed's key made it.

    FORMAT.md, "Version 2 master-key wrap": unwrap the data key with the old binding, wrap it again (fresh salt
    and nonce) with the new one. Other envelopes (version 1, hybrid-pq, aes-256-cbc) are returned as they are.
    """
    master, kid = _master_key()
    if envelope.get("type") != "aes-256-gcm-hkdf-sha256-v2" or envelope.get("key_id") != kid:
        return envelope

    def wrap_key(salt):
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"quankey-backup/v2 key-wrap").derive(master)

    aad_prefix = b"quankey-backup/v2 key-wrap\x00" + kid.encode("ascii")
    data_key = AESGCM(wrap_key(base64.b64decode(envelope["salt"]))).decrypt(
        base64.b64decode(envelope["nonce"]), base64.b64decode(envelope["wrapped_key"]),
        aad_prefix + _binding(host, database, old_name))
    salt, nonce = os.urandom(16), os.urandom(12)
    wrapped = AESGCM(wrap_key(salt)).encrypt(nonce, data_key, aad_prefix + _binding(host, database, new_name))
    return dict(envelope, salt=base64.b64encode(salt).decode("ascii"), nonce=base64.b64encode(nonce).decode("ascii"),
                wrapped_key=base64.b64encode(wrapped).decode("ascii"))


def _resign(metadata):
    """Sign again with the key derived from the test bed's master key, if that key signed it (FORMAT.md recipe)."""
    signature = metadata.get("signature")
    master, kid = _master_key()
    if not isinstance(signature, dict) or signature.get("key_id") != kid:
        return metadata
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=b"quankey-backup/v1 metadata-signing").derive(master)
    body = dict((field, value) for field, value in metadata.items() if field != "signature")
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    mac = hmac.new(key, b"quankey-backup/v1 metadata\x00" + text.encode("ascii"), hashlib.sha256).digest()
    return dict(body, signature=dict(signature, value=base64.b64encode(mac).decode("ascii")))


def _newest_metadata_key(client, bucket, args):
    metadata_prefix = _prefixes(args.host, args.db)[1]
    metadata_keys = sorted(item["Key"] for item in _list(client, bucket, metadata_prefix))
    if not metadata_keys:
        raise SystemExit("no backups under %s" % metadata_prefix)
    return metadata_keys[-1]  # names end in a sortable timestamp


def tamper(client, bucket, args):
    key = _newest_metadata_key(client, bucket, args)
    metadata = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    metadata["checksum_sha256"] = hashlib.sha256(b"another object").hexdigest()
    client.put_object(Bucket=bucket, Key=key, ContentType="application/json", Body=json.dumps(metadata).encode("utf-8"))
    return {"tampered": key}


def add_field(client, bucket, args):
    key = _newest_metadata_key(client, bucket, args)
    metadata = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    metadata[args.field] = args.value
    client.put_object(Bucket=bucket, Key=key, ContentType="application/json", Body=json.dumps(metadata).encode("utf-8"))
    return {"changed": key, "field": args.field}


def copy(client, bucket, args):
    source_meta_key = _newest_metadata_key(client, bucket, args)
    object_prefix, metadata_prefix = _prefixes(args.host, args.db)
    to_object_prefix, to_metadata_prefix = _prefixes(args.to_host, args.db)
    name = source_meta_key[len(metadata_prefix):-len(".meta")]
    copies = [(object_prefix + name + ".encrypted", to_object_prefix + name + ".encrypted"),
              (source_meta_key, to_metadata_prefix + name + ".meta")]  # the metadata last: it commits the copy
    for source, target in copies:
        client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source})
    return {"name": name, "object_key": copies[0][1], "metadata_key": copies[1][1]}


def list_objects(client, bucket, args):
    found = []
    for prefix in _prefixes(args.host):
        for item in _list(client, bucket, prefix):
            head = client.head_object(Bucket=bucket, Key=item["Key"])
            found.append({"key": item["Key"], "size": item["Size"], "storage_class": head.get("StorageClass", "STANDARD"),
                          "etag": head["ETag"]})
    return {"objects": sorted(found, key=lambda item: item["key"])}


def purge(client, bucket, args):
    deleted = 0
    for prefix in _prefixes(args.host):
        for item in list(_list(client, bucket, prefix)):
            client.delete_object(Bucket=bucket, Key=item["Key"])
            deleted += 1
        for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return {"deleted": deleted}


def age(client, bucket, args):
    object_prefix, metadata_prefix = _prefixes(args.host, args.db)
    metadata_keys = sorted(item["Key"] for item in _list(client, bucket, metadata_prefix))
    if not metadata_keys:
        raise SystemExit("no backups under %s" % metadata_prefix)
    old_meta_key = metadata_keys[-1]  # names end in a sortable timestamp
    old_name = old_meta_key[len(metadata_prefix):-len(".meta")]
    match = NAME_RE.match(old_name)
    when = datetime.datetime.strptime(match.group("ts"), TS_FORMAT) - datetime.timedelta(hours=args.hours)
    new_name = "%s_backup_%s" % (match.group("stem"), when.strftime(TS_FORMAT))
    old_object_key = object_prefix + old_name + ".encrypted"
    new_object_key = object_prefix + new_name + ".encrypted"
    new_meta_key = metadata_prefix + new_name + ".meta"

    metadata = json.loads(client.get_object(Bucket=bucket, Key=old_meta_key)["Body"].read())
    metadata.update(name=new_name, timestamp=when.strftime(TS_FORMAT), created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    object_key=new_object_key,
                    envelope=_rewrap(metadata["envelope"], args.host, args.db, old_name, new_name))
    # its globals object names the backup it belongs to (host, database, name): an aged copy keeps none
    old_globals = metadata.pop("globals", None)
    metadata = _resign(metadata)
    head = client.head_object(Bucket=bucket, Key=old_object_key)
    client.copy_object(Bucket=bucket, Key=new_object_key, CopySource={"Bucket": bucket, "Key": old_object_key},
                       StorageClass=head.get("StorageClass", "STANDARD"))
    client.put_object(Bucket=bucket, Key=new_meta_key, ContentType="application/json",
                      Body=(json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    client.delete_object(Bucket=bucket, Key=old_meta_key)  # uncommit the new-looking copy first
    client.delete_object(Bucket=bucket, Key=old_object_key)
    if old_globals:
        client.delete_object(Bucket=bucket, Key=old_globals["object_key"])
    return {"from": old_name, "to": new_name}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="s3_tool.py")
    commands = {"list": list_objects, "purge": purge, "age": age, "tamper": tamper, "add-field": add_field, "copy": copy}
    parser.add_argument("command", choices=sorted(commands))
    parser.add_argument("--host", required=True)
    parser.add_argument("--db")
    parser.add_argument("--hours", type=float, default=72)
    parser.add_argument("--field", help="add-field: the field to add")
    parser.add_argument("--value", help="add-field: its (string) value")
    parser.add_argument("--to-host", help="copy: the host id whose place receives the copy")
    args = parser.parse_args(argv)
    if args.command in ("age", "tamper", "add-field", "copy") and not args.db:
        parser.error("%s needs --db" % args.command)
    if args.command == "add-field" and (not args.field or args.value is None):
        parser.error("add-field needs --field and --value")
    if args.command == "copy" and not args.to_host:
        parser.error("copy needs --to-host")
    bucket = os.environ["S3_BUCKET"]
    result = commands[args.command](_client(), bucket, args)
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
