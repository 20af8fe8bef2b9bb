#!/usr/bin/env python
"""What each encryption mode costs, against aes-256-gcm measured in the same run.

    .venv/bin/python bench/crypto_modes.py [--mib 256] [--repeat 5]

Streams MIB MiB of incompressible data through each mode's encryptor and
decryptor in 1 MiB chunks (as the pipeline does) and times the per-backup key
work: wrapping or sealing a data key, opening it, signing and verifying a
metadata document, the aes-256-cbc passphrase derivation, and the probe that finds how
a seed object's key was derived (every derivation tried, worst case). Prints medians and
ratios to the aes-256-gcm baseline. CPU only: no PostgreSQL, no S3.
"""

import argparse
import os
import statistics
import sys
import time

from quankey_backup.formats import crypto, openssl_enc, recipients, signing

CHUNK = 1024 * 1024


def _median_seconds(func, repeat):
    times = []
    for _count in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _stream(make, data, chunks):
    def run():
        worker = make()
        out = [worker.update(data) for _count in range(chunks)]
        out.append(worker.finalize())
        return out
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = os.urandom(CHUNK)
    data_key, master, passphrase = os.urandom(32), os.urandom(32), b"bench-passphrase-text"

    gcm_object = b"".join(_stream(lambda: crypto.StreamEncryptor(data_key), data, args.mib)())
    cbc_object = b"".join(_stream(lambda: openssl_enc.CbcEncryptor(passphrase), data, args.mib)())

    def reader(payload, make):
        def run():
            worker = make()
            for start in range(0, len(payload), CHUNK):
                worker.update(payload[start:start + CHUNK])
            worker.finalize()
        return run

    rows = [
        ("encrypt aes-256-gcm (format v1)", _stream(lambda: crypto.StreamEncryptor(data_key), data, args.mib), "gcm-enc"),
        ("encrypt aes-256-cbc (OpenSSL enc)", _stream(lambda: openssl_enc.CbcEncryptor(passphrase), data, args.mib), "gcm-enc"),
        ("decrypt aes-256-gcm", reader(gcm_object, lambda: crypto.StreamDecryptor(data_key)), "gcm-dec"),
        ("decrypt aes-256-cbc", reader(cbc_object, lambda: openssl_enc.CbcDecryptor([("k", passphrase)], check_plaintext=None)),
         "gcm-dec"),
    ]
    results = {}
    print("%d MiB in 1 MiB chunks, median of %d runs, %s" % (args.mib, args.repeat, sys.version.split()[0]))
    for label, func, baseline in rows:
        seconds = _median_seconds(func, args.repeat)
        results.setdefault(baseline, seconds)
        ratio = seconds / results[baseline]
        print("  %-36s %7.3f s  %7.0f MiB/s  %5.2fx of aes-256-gcm" % (label, seconds, args.mib / seconds, ratio))

    identity = recipients.generate_identity()
    recipient = identity.recipient
    metadata = {"checksum_sha256": "ab" * 32, "size_bytes": 1 << 30, "envelope": crypto.wrap_data_key(master, data_key)}
    signing_key = signing.derive_signing_key(master)
    signed = signing.sign_metadata(metadata, "qk1-x", signing_key)
    sealed = recipients.seal_data_key([recipient], data_key)
    wrapped = crypto.wrap_data_key(master, data_key)
    per_backup = [
        ("wrap data key (aes-256-gcm)", lambda: crypto.wrap_data_key(master, data_key)),
        ("open data key (aes-256-gcm)", lambda: crypto.unwrap_data_key(master, wrapped)),
        ("seal data key to 1 recipient (hybrid-pq)", lambda: recipients.seal_data_key([recipient], data_key)),
        ("open data key (hybrid-pq)", lambda: recipients.open_data_key([identity], sealed)),
        ("sign metadata", lambda: signing.sign_metadata(metadata, "qk1-x", signing_key)),
        ("verify metadata", lambda: signing.verify_metadata(signed, {"qk1-x": signing_key})),
        ("PBKDF2 10000 (aes-256-cbc, per object)", lambda: openssl_enc.CbcEncryptor(passphrase).update(b"x")),
    ]
    base = None
    print("per backup (median of 200):")
    for label, func in per_backup:
        seconds = _median_seconds(func, 200)
        base = base or seconds
        print("  %-42s %8.3f ms  %6.1fx of wrapping" % (label, seconds * 1000, seconds / base))
    _probe_costs(passphrase, max(1, args.repeat))
    return 0


def _probe_costs(passphrase, repeat):
    """What finding a seed object's key derivation costs: each derivation tried, and the whole probe when none fits."""
    print("seed key derivation probe (per passphrase, median of %d; a restore or adoption pays it once per object):"
          % repeat)
    salt = os.urandom(8)
    total = 0.0
    first = None
    for kdf in openssl_enc.probe_kdfs():
        seconds = _median_seconds(lambda kdf=kdf: kdf.derive(passphrase, salt), repeat)
        first = first or seconds
        total += seconds
        print("  %-36s %8.3f ms  %6.1fx of the first (the seed's default)" % (kdf.spec(), seconds * 1000, seconds / first))
    block = os.urandom(32)  # a header and a first block no derivation opens: the worst case, every one tried
    obj = openssl_enc.MAGIC + salt + block[:16]

    def worst():
        decryptor = openssl_enc.CbcDecryptor([("k", passphrase)], kdfs=openssl_enc.probe_kdfs())
        try:
            decryptor.update(obj)
        except openssl_enc.WrongKeyError:
            pass

    seconds = _median_seconds(worst, repeat)
    print("  %-36s %8.3f ms  (%d derivations, sum of the rows %.3f ms)"
          % ("whole probe, nothing fits", seconds * 1000, len(openssl_enc.probe_kdfs()), total * 1000))


if __name__ == "__main__":
    sys.exit(main())
