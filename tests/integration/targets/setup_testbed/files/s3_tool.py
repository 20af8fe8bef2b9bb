# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Look at and rearrange the test bucket behind the modules' back (integration tests only).

    python s3_tool.py list  --host H           JSON: every object of host H with key, size, storage class and ETag
    python s3_tool.py purge --host H           delete every key and open upload of host H
    python s3_tool.py age   --host H --db D --hours N
        make the newest backup of H/D N hours older, honestly: its object and metadata move to the keys
        of the earlier time and the metadata's own times and keys are rewritten, and re-signed when the
        test bed's BACKUP_ENCRYPTION_KEY signed it (docs/FORMAT.md, "Metadata signature"); the old keys
        are deleted
    python s3_tool.py tamper --host H --db D
        what someone who can write the bucket but holds no key could do: change the newest backup's
        checksum_sha256 in its metadata (the signature is left as it was)

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
import sys

import boto3
from cryptography.hazmat.primitives import hashes
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


def _resign(metadata):
    """Sign again with the key derived from the test bed's master key, if that key signed it (FORMAT.md recipe)."""
    signature = metadata.get("signature")
    master = base64.b64decode(os.environ.get("BACKUP_ENCRYPTION_KEY", ""))
    kid = "qk1-" + hashlib.sha256(b"quankey-backup/v1 key-id\x00" + master).hexdigest()[:16]
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
                    object_key=new_object_key)
    metadata = _resign(metadata)
    head = client.head_object(Bucket=bucket, Key=old_object_key)
    client.copy_object(Bucket=bucket, Key=new_object_key, CopySource={"Bucket": bucket, "Key": old_object_key},
                       StorageClass=head.get("StorageClass", "STANDARD"))
    client.put_object(Bucket=bucket, Key=new_meta_key, ContentType="application/json",
                      Body=(json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    client.delete_object(Bucket=bucket, Key=old_meta_key)  # uncommit the new-looking copy first
    client.delete_object(Bucket=bucket, Key=old_object_key)
    return {"from": old_name, "to": new_name}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="s3_tool.py")
    parser.add_argument("command", choices=["list", "purge", "age", "tamper"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--db")
    parser.add_argument("--hours", type=float, default=72)
    args = parser.parse_args(argv)
    if args.command in ("age", "tamper") and not args.db:
        parser.error("%s needs --db" % args.command)
    bucket = os.environ["S3_BUCKET"]
    result = {"list": list_objects, "purge": purge, "age": age, "tamper": tamper}[args.command](_client(), bucket, args)
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
