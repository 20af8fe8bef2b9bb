# -*- coding: utf-8 -*-
# Copyright: quankey.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3 (or any S3-compatible store) for the engine.

Every botocore failure is translated into a :class:`StorageError` (or
:class:`NotFoundError`) whose message names the bucket, the key, the action and
what to check. A transient failure (connection refused, reset or timed out,
HTTP 5xx, throttling) is tried again with capped exponential backoff until the
retry window (``S3_RETRY_WINDOW_SECONDS``) has passed; a download cut mid-body
goes on with a ranged GET of the same object version (If-Match its ETag) from
the byte reached, and a download that cannot go on names the byte it stopped at.
Uploads are multipart, with parts sent in the background while the pipeline
keeps producing, and are aborted on any failure (the abort is retried too). A
store counts its retries and resumed downloads (:meth:`S3Store.retry_counts`)
for the runs' results.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import functools
import logging
import os
import random
import re
import sys
import importlib.util
import threading
import time
import traceback

from ..config import DEFAULT_RETRY_WINDOW, FIELD_VARIABLES
from ..errors import AccessDeniedError, BackupError, ConfigError, ConflictError, NotFoundError, StorageError

# botocore, boto3's core, makes the client: boto3 itself (its resources and s3transfer, a fifth of a second to import)
# is never used. botocore itself (~0.1 s) is imported when the first client is made (_load_botocore), not with this
# module: archive_command's wal-push runs once per WAL segment, and most calls, for segments pushed ahead, only check
# a marker and never talk to S3.
HAS_BOTO3 = importlib.util.find_spec("botocore") is not None and importlib.util.find_spec("urllib3") is not None
BOTO3_IMPORT_ERROR = None if HAS_BOTO3 else "ImportError: No module named 'botocore' (boto3's core)"
botocore = None  # the package, once _load_botocore imported it
urllib3 = None
# What a request through botocore raises for the store's answer (or its absence): translated, maybe retried. Empty
# until botocore is imported: nothing can raise those before a client exists.
_BOTO_ERRORS = ()

LOG = logging.getLogger("quankey_backup")


def _load_botocore():
    """Import botocore (and urllib3) on first use; ConfigError naming the package when that fails."""
    global botocore, urllib3, _BOTO_ERRORS, HAS_BOTO3, BOTO3_IMPORT_ERROR  # pylint: disable=global-statement
    if botocore is not None:
        return
    try:
        import botocore.config  # pylint: disable=redefined-outer-name,import-outside-toplevel
        import botocore.exceptions  # pylint: disable=redefined-outer-name,import-outside-toplevel
        import botocore.parsers  # pylint: disable=redefined-outer-name,import-outside-toplevel
        import botocore.session  # pylint: disable=redefined-outer-name,import-outside-toplevel
        import urllib3  # pylint: disable=redefined-outer-name,import-outside-toplevel
    except ImportError:
        HAS_BOTO3 = False
        BOTO3_IMPORT_ERROR = traceback.format_exc()
        raise ConfigError("the Python package 'boto3' (its core, botocore) cannot be imported: pip install boto3 (%s)"
                          % BOTO3_IMPORT_ERROR.strip().splitlines()[-1])
    _BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                    botocore.parsers.ResponseParserError)


def _have_botocore():
    """Whether botocore is imported, importing it now when it can be (a broken install: False)."""
    if botocore is None and HAS_BOTO3:
        try:
            _load_botocore()
        except ConfigError:
            return False
    return botocore is not None


MIB = 1024 * 1024
MIN_PART_SIZE = 8 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10000
COPY_LIMIT = 5 * 1024 * MIB  # the largest object one CopyObject copies
PART_TIER = 2000        # parts per size tier: sizes double every PART_TIER parts
UPLOAD_CONCURRENCY = 3  # parts in flight besides the one being filled
READ_CHUNK = MIB
RESUME_PIECE = 256 * 1024  # a streamed download reads in pieces this big: a cut connection loses at most one
FIRST_WAIT = 0.5    # seconds before the first retry of a request, doubled after each failure ...
MAX_WAIT = 10.0     # ... up to this; each wait is 50-100 % of that, at random (jitter), and ends within the window
ABORT_BUDGET = 60   # seconds an abort after a failure keeps trying (at most the retry window)
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
FALLBACK_REGION = "us-east-1"  # when neither the settings nor botocore's chain (variables, the profile) name one
# What S3Store.retry_counts() counts, the ``s3_retries`` of the runs' results (docs/CLI.md):
# requests that failed transiently and were sent again; the extra attempts they took (a resumed read included);
# the downloads cut mid-body that went on from the byte reached (a ranged GET of the same version answered).
RETRY_COUNTS = ("requests_retried", "retries", "download_resumes")

_ACCESS_CODES = ("AccessDenied", "AllAccessDisabled", "403", "Forbidden")
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired")
_MISSING_CODES = ("NoSuchKey", "404", "NotFound")
_CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
# Answers of a store that does not implement conditional requests (If-Match / If-None-Match on writes).
_UNSUPPORTED_CODES = ("NotImplemented", "501")
# Answers that may be different if the request is sent again: throttling, timeouts, the store's own failures.
_TRANSIENT_CODES = ("SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
                    "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException",
                    "RequestLimitExceeded", "BandwidthLimitExceeded", "PriorRequestNotComplete")
_TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
# Requests whose answers have no body: a bare 404 (no S3 error code) to them is S3's own "not found".
_BODILESS_ACTIONS = ("HeadObject", "HeadBucket")
# What the socket said, in the text of the error a botocore network failure wraps.
_SOCKET_CAUSE_RE = re.compile(r"Connection refused|Connection reset by peer|Remote end closed connection without response|"
                              r"Broken pipe|No route to host|Network is unreachable|Name or service not known|"
                              r"Temporary failure in name resolution|IncompleteRead\(\d+ bytes read, \d+ more expected\)")


# Object Lock (BACKUP_OBJECT_LOCK_MODE, _DAYS): what S3 calls each mode.
LOCK_MODES = {"governance": "GOVERNANCE", "compliance": "COMPLIANCE"}
# How a bucket is given Object Lock, for the messages that say it has none.
LOCK_HOWTO = ("create the bucket with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket, or "
              "the quankey.backup bucket playbook), or enable it on a versioned bucket (aws s3api "
              "put-object-lock-configuration --object-lock-configuration ObjectLockEnabled=Enabled)")


def lock_of_settings(settings):
    """``(mode, days)`` of the settings' Object Lock (BACKUP_OBJECT_LOCK_MODE, _DAYS), or None when it is off."""
    mode = getattr(settings, "object_lock_mode", None)
    if not mode:
        return None
    settings.require("object_lock_days")  # a backup's plan asks first: other commands never get here without them
    return mode, settings.object_lock_days


def no_lock_error(bucket, label=None):
    """The ConfigError of a bucket without Object Lock asked to lock objects."""
    label = label or _variable
    return ConfigError("bucket %r has no Object Lock, and %s asks for every object of a backup to be locked: %s; or "
                       "unset %s" % (bucket, label("object_lock_mode"), LOCK_HOWTO, label("object_lock_mode")))


def _utc(when):
    """An aware datetime in UTC (botocore gives tzlocal ones)."""
    return when.astimezone(datetime.timezone.utc)


def _unsupported(exc):
    """Whether a StorageError is the store saying it does not implement a request's conditions."""
    return any(code in exc.message for code in _UNSUPPORTED_CODES)


# How long an S3 restore of an archived object takes, by storage class and tier (AWS's published times).
ARCHIVE_HOURS = {
    "GLACIER": {"Expedited": "1-5 minutes", "Standard": "3-5 hours", "Bulk": "5-12 hours"},
    "DEEP_ARCHIVE": {"Standard": "12 hours", "Bulk": "48 hours"},
}


def archive_hours(storage_class, tier):
    """How long the restore of an object of ``storage_class`` at ``tier`` takes, in words ('3-5 hours')."""
    times = ARCHIVE_HOURS.get(storage_class, ARCHIVE_HOURS["GLACIER"])
    return times.get(tier) or times["Standard"]


class ArchivedError(StorageError):
    """An object in an archive storage class that cannot be read before an S3 restore request completes."""

    def __init__(self, message, key=None, storage_class=None, started=False):
        super(ArchivedError, self).__init__(message)
        self.key = key
        self.storage_class = storage_class
        self.started = started


def choose_part_size(expected_bytes):
    """The first part size: at least 8 MiB, large enough that ``expected_bytes`` fits in 9,000 parts."""
    wanted = -(-max(int(expected_bytes or 0), 0) // (MAX_PARTS - 1000))
    size = max(MIN_PART_SIZE, -(-wanted // MIB) * MIB)
    return min(size, MAX_PART_SIZE)


def part_size_for(part_number, base_size):
    """Size of part ``part_number`` (1-based): ``base_size``, doubled every PART_TIER parts.

    However far off the size estimate was, a stream fits in 10,000 parts up to
    ~31x the estimate (~484 GiB from the 8 MiB minimum).
    """
    return min(base_size * (2 ** ((part_number - 1) // PART_TIER)), MAX_PART_SIZE)


def _error_code(exc):
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    if not code:
        code = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def _http_status(exc):
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _s3_error_code(exc):
    """The code of the S3 error document in an answer, or '' when it had none (botocore then uses the HTTP status)."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code") or "")
    return "" if code.isdigit() else code


def _variable(field):
    return FIELD_VARIABLES[field]


def is_transient(exc):
    """Whether a botocore failure may not happen again if the request is sent again.

    Yes: no connection, a connection reset or closed, a timeout, a body cut short, HTTP 429/5xx,
    throttling and timeout codes. No: every other answer (access denied, no such bucket, bad
    credentials, a failed condition...), a TLS certificate problem, missing credentials.
    """
    if not _have_botocore():
        return False
    errors = botocore.exceptions
    if isinstance(exc, errors.SSLError):
        return False
    if isinstance(exc, (errors.ConnectionError, errors.HTTPClientError, errors.IncompleteReadError)):
        return True
    if isinstance(exc, errors.ClientError):
        return _s3_error_code(exc) in _TRANSIENT_CODES or _http_status(exc) in _TRANSIENT_STATUSES
    return False


def _not_s3_answer(exc, action):
    """Whether an error answer came from something that is not S3 (a web server, a wrong port).

    A 3xx/4xx without an S3 error document, to a request whose S3 errors always carry one: HEAD answers
    have no body, so a bare 404 to HeadObject is S3's own "no such key" and proves nothing.
    """
    status = _http_status(exc)
    return (_have_botocore() and isinstance(exc, botocore.exceptions.ClientError) and action not in _BODILESS_ACTIONS
            and status is not None and 300 <= status < 500 and not _s3_error_code(exc))


def _network_failures():
    errors = botocore.exceptions
    return ((errors.EndpointConnectionError, "cannot connect"), (errors.ConnectTimeoutError, "connecting timed out"),
            (errors.ReadTimeoutError, "no answer within the read timeout"),
            (errors.ConnectionClosedError, "connection closed before the answer"),
            (errors.ResponseStreamingError, "connection lost while reading the answer"),
            (errors.IncompleteReadError, "answer cut short"))


def describe_cause(exc):
    """A failure in a few words, for the retry warnings: 'HTTP 503 SlowDown', 'cannot connect (Connection refused)'."""
    if not _have_botocore():
        return str(exc)
    if isinstance(exc, botocore.exceptions.ClientError):
        return ("HTTP %s %s" % (_http_status(exc), _s3_error_code(exc))).strip()
    for kind, words in _network_failures():
        if isinstance(exc, kind):
            said = _SOCKET_CAUSE_RE.search(str(getattr(exc, "kwargs", {}).get("error", "")))
            return "%s: %s" % (words, said.group(0)) if said else words
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def attempt_timeouts(window):
    """``(connect, read)`` timeouts of one attempt: 10 and 120 s, shortened to the retry window (not below 2 and 5 s).

    So a stalled store fails a request about when the window ends instead of long after it.
    """
    if not window:
        return CONNECT_TIMEOUT, READ_TIMEOUT
    return min(CONNECT_TIMEOUT, max(window, 2)), min(READ_TIMEOUT, max(window, 5))


def _pause(seconds, cancel=None):
    """Wait ``seconds``, or until ``cancel`` (an Event) is set; whether it was."""
    if cancel is None:
        time.sleep(seconds)
        return False
    return cancel.wait(seconds)


class RetryPolicy:
    """How long and how often a failing S3 request is tried again.

    Waits double from FIRST_WAIT up to MAX_WAIT, each 50-100 % of that at random (so clients that
    failed together do not retry together), and stop once ``window`` seconds have passed since the
    request was first sent; the last attempt is made when the window ends. ``clock``, ``pause``
    (``pause(seconds, cancel)``, see :func:`_pause`) and ``jitter`` (a random number in [0, 1)) are
    there for tests.
    """

    def __init__(self, window, clock=time.monotonic, pause=_pause, jitter=random.random):
        self.window = window
        self.clock = clock
        self.pause = pause
        self.jitter = jitter

    def start(self, budget=None, cancel=None):
        """The retries of one request from now: within ``min(window, budget)`` seconds; ``cancel``, an Event, stops them."""
        window = self.window if budget is None else min(self.window, budget)
        return RetryTimer(self, window, cancel)


class RetryTimer:
    """The retries of one request: after each transient failure, :meth:`next_wait` says how long to wait, or None."""

    def __init__(self, policy, window, cancel=None):
        self.policy = policy
        self.window = window
        self.cancel = cancel
        self.started = policy.clock()
        self.failures = 0

    def elapsed(self):
        """Seconds since the request was first sent."""
        return self.policy.clock() - self.started

    def left(self):
        """Seconds left of the window."""
        return self.window - self.elapsed()

    def cancelled(self):
        """Whether the retries were called off (the upload they serve is failing or aborted)."""
        return self.cancel is not None and self.cancel.is_set()

    def next_wait(self):
        """Count a failure; seconds to wait before the next attempt, or None when the window is spent or cancelled."""
        self.failures += 1
        left = self.left()
        if left <= 0 or self.cancelled():
            return None
        ceiling = min(MAX_WAIT, FIRST_WAIT * 2 ** min(self.failures - 1, 30))
        return min(left, ceiling * (0.5 + self.policy.jitter() / 2))

    def wait(self, seconds):
        """Wait ``seconds``; False when cancelled meanwhile."""
        return not self.policy.pause(seconds, self.cancel)


_TLS_CAUSE_RE = re.compile(r"\[SSL[^\]]*\][^(]*")


def tls_failure(exc, action, where, endpoint=None, ca_bundle=None, label=_variable):
    """The StorageError of a TLS failure (botocore's SSLError): a certificate not signed by a trusted CA names the CA
    bundle it was checked against and the setting that names it."""
    said = _TLS_CAUSE_RE.search(str(exc))
    cause = said.group(0).strip() if said else str(exc).splitlines()[0]
    endpoint = endpoint or "of AWS"
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        checked = ("the CA bundle %s (%s)" % (ca_bundle, label("ca_bundle")) if ca_bundle
                   else "botocore's default CA bundle (%s is not set)" % label("ca_bundle"))
        return StorageError("TLS certificate verification failed for the S3 endpoint %s (%s of %s: %s): its certificate "
                            "was checked against %s; set %s to the CA certificate(s) that signed it"
                            % (endpoint, action, where, cause, checked, label("ca_bundle")))
    return StorageError("TLS with the S3 endpoint %s failed (%s of %s: %s): check that %s is an https:// URL of a TLS "
                        "port, and %s" % (endpoint, action, where, cause, label("endpoint_url"), label("ca_bundle")))


def translate_error(exc, action, bucket, key=None, endpoint=None, label=_variable, ca_bundle=None):
    """A StorageError/NotFoundError for a botocore exception, naming what, where and what to check.

    ``label(field)`` says where the user sets a setting (a variable, or a module option); ``ca_bundle``: the CA bundle
    TLS certificates were checked against (None: botocore's own), for a TLS failure's message.
    """
    where = "s3://%s/%s" % (bucket, key or "")
    via = " via %s" % endpoint if endpoint else ""
    if not _have_botocore():
        return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, exc))
    if isinstance(exc, botocore.exceptions.SSLError):
        return tls_failure(exc, action, where, endpoint, ca_bundle, label)
    if _not_s3_answer(exc, action):
        return StorageError("the S3 endpoint %s answered HTTP %s without an S3 error to %s of %s (not an S3 endpoint?): "
                            "check %s" % (endpoint or "of AWS", _http_status(exc), action, where, label("endpoint_url")))
    if isinstance(exc, botocore.parsers.ResponseParserError):
        return StorageError("the S3 endpoint %s answered %s of %s with what is not S3 XML (not an S3 endpoint?): check %s"
                            % (endpoint or "of AWS", action, where, label("endpoint_url")))
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError("no AWS credentials found for %s: give this host an instance role (or web identity), or set "
                            "%s, or %s and %s" % (where, label("profile"), label("access_key"), label("secret_key")))
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
        return StorageError("cannot reach the S3 endpoint %s (%s %s): check %s, the network and that the store is up"
                            % (endpoint or "of AWS", action, where, label("endpoint_url")))
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return StorageError("S3 endpoint%s timed out during %s of %s: retry, and check the network" % (via, action, where))
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _error_code(exc)
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and action == "HeadBucket"):
            return StorageError("bucket %r does not exist%s: create it or fix %s" % (bucket, via, label("bucket")))
        if code in _MISSING_CODES:
            return NotFoundError("no object at %s%s" % (where, via))
        if code in _CONFLICT_CODES:
            return ConflictError("%s of %s was refused because another writer got there first (the object was created "
                                 "or changed since it was read)%s" % (action, where, via))
        if code in _CREDENTIAL_CODES:
            return StorageError("S3 rejected the credentials (%s) for %s %s: check %s and %s"
                                % (code, action, where, label("access_key"), label("secret_key")))
        if code in _ACCESS_CODES:
            return AccessDeniedError("S3 access denied for %s (%s): check the IAM policy for this host's prefix" % (where, action))
        if code == "InvalidRequest" and "ObjectLock" in str(exc).replace(" ", ""):
            return no_lock_error(bucket, label)
        if code == "EntityTooSmall":
            return StorageError("S3 rejected a multipart part as too small during %s of %s" % (action, where))
        return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, code or exc))
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, exc))
    return StorageError("S3 %s of %s failed%s: %s" % (action, where, via, exc))


def unverified_tls_warning(endpoint_url, label=_variable):
    """The warning of a store whose TLS certificates are not checked (validate_certs false)."""
    return ("%s is false: the TLS certificate of the S3 endpoint %s is not checked, so anyone on the way can read and "
            "change the requests (backups stay encrypted, metadata signed); set %s to its CA certificate instead"
            % (label("validate_certs"), endpoint_url or "of AWS", label("ca_bundle")))


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _profile_retries(scoped, profile, label):
    """The retries the profile's section of the AWS config file asks for (max_attempts, retry_mode), as botocore's."""
    retries = {}
    if scoped.get("max_attempts") not in (None, ""):
        try:
            retries["total_max_attempts"] = int(scoped["max_attempts"])
        except ValueError:
            raise ConfigError("max_attempts of AWS profile %r (%s) must be a whole number, got %r: fix it in the AWS "
                              "config file" % (profile, label("profile"), scoped["max_attempts"]))
    if scoped.get("retry_mode") not in (None, ""):
        retries["mode"] = scoped["retry_mode"]
    return retries


def client_config(window, aws_config=None, max_attempts=None, retry_mode=None, profile_retries=None, label=_variable):
    """The botocore Config of the S3 client.

    Retries: botocore's own are off (one attempt each, two with no retry window) and every retry is ours (logged,
    within ``window``), unless the user asks botocore for them: ``aws_config``'s ``retries`` over ``max_attempts``
    (AWS_MAX_ATTEMPTS, total attempts) and ``retry_mode`` (AWS_RETRY_MODE) over the profile's (``profile_retries``),
    mode ``standard`` unless one says otherwise. Then each attempt of ours is botocore's attempts, and ours still
    retry within the window (0: botocore's alone). Timeouts: :func:`attempt_timeouts` of the window, unless
    ``aws_config`` sets them. Any other botocore Config parameter of ``aws_config`` is passed on; an unknown one is a
    ConfigError naming ``label("aws_config")``.
    """
    _load_botocore()
    aws_config = dict(aws_config or {})
    where = label("aws_config")
    retries = dict(profile_retries or {})
    if max_attempts:
        retries["total_max_attempts"] = int(max_attempts)
    if retry_mode:
        retries["mode"] = retry_mode
    asked = aws_config.pop("retries", None) or {}
    if not isinstance(asked, dict):
        raise ConfigError("%s: retries must be a mapping (e.g. {\"max_attempts\": 10, \"mode\": \"adaptive\"}), got %r"
                          % (where, asked))
    if "max_attempts" in asked or "total_max_attempts" in asked:
        retries.pop("total_max_attempts", None)
    retries.update(asked)
    if retries:
        retries.setdefault("mode", "standard")
    else:  # one attempt each when our retries are on (they log, and the window governs), else botocore tries twice
        retries = {"total_max_attempts": 1 if window else 2, "mode": "standard"}
    unknown = sorted(set(aws_config) - set(botocore.config.Config.OPTION_DEFAULTS))
    if unknown:
        raise ConfigError("%s has %s, which %s of botocore's Config: use its parameters, e.g. retries, "
                          "connect_timeout, read_timeout, max_pool_connections, s3, proxies"
                          % (where, ", ".join(unknown), "is not a parameter" if len(unknown) == 1 else "are not parameters"))
    for name in ("connect_timeout", "read_timeout"):
        if name in aws_config and not (_number(aws_config[name]) and aws_config[name] > 0):
            raise ConfigError("%s: %s must be a number of seconds above 0, got %r" % (where, name, aws_config[name]))
    connect_timeout, read_timeout = attempt_timeouts(window)
    try:
        ours = botocore.config.Config(retries=retries, connect_timeout=connect_timeout, read_timeout=read_timeout,
                                      max_pool_connections=UPLOAD_CONCURRENCY + 4, signature_version="s3v4")
        return ours.merge(botocore.config.Config(**aws_config))
    except (TypeError, ValueError, botocore.exceptions.BotoCoreError) as exc:
        raise ConfigError("%s is refused by botocore's Config: %s" % (where, exc))


class S3Store:
    """One bucket of an S3-compatible store.

    Every request is tried again after a transient failure until ``retry_window`` seconds have
    passed since it was first sent (0: no retries of ours; botocore still tries twice). ``retry``
    (a :class:`RetryPolicy`) replaces the clock and sleep in tests.

    The credentials are the keys when given, else those of ``profile`` (the AWS config and credentials files), else
    botocore's chain (web identity, the instance role...). The region is ``region``, else botocore's (AWS_REGION,
    AWS_DEFAULT_REGION, the profile's), else us-east-1. TLS certificates are checked against ``ca_bundle`` (else
    botocore's: the profile's ca_bundle, REQUESTS_CA_BUNDLE, its own), or not at all with ``validate_certs`` false (a
    warning). ``aws_config``, ``max_attempts`` and ``retry_mode``: see :func:`client_config`.
    """

    restore_tier = "Standard"  # an archived object's S3 restore request (S3_RESTORE_TIER, S3_RESTORE_DAYS)
    restore_days = 7

    def __init__(self, bucket, *, region=None, endpoint_url=None, access_key=None, secret_key=None, session_token=None,
                 storage_class="STANDARD_IA", retry_window=DEFAULT_RETRY_WINDOW, label=_variable, retry=None,
                 profile=None, ca_bundle=None, validate_certs=True, aws_config=None, max_attempts=None,
                 retry_mode=None, object_lock=None):
        if not HAS_BOTO3:
            raise ConfigError("the Python package 'boto3' is required: pip install boto3")
        _load_botocore()
        if not bucket:
            raise ConfigError("S3_BUCKET is not set: set it to the backup bucket (e.g. S3_BUCKET=quankey-backups-prod)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.storage_class = storage_class
        self.object_lock = object_lock  # (mode, days): every object written is locked so long (Object Lock)
        self.conditional_writes = True  # until the store answers NotImplemented to one
        self.label = label
        self._counts = dict.fromkeys(RETRY_COUNTS, 0)
        self._counts_lock = threading.Lock()  # parts are uploaded, and retried, on several threads
        self.retry = retry or RetryPolicy(retry_window)
        self.ca_bundle = ca_bundle if validate_certs else None
        if self.ca_bundle and not (os.path.isfile(self.ca_bundle) and os.access(self.ca_bundle, os.R_OK)):
            raise ConfigError("%s %s is %s: point it at a PEM file of the CA certificate(s) that sign the S3 endpoint's "
                              "certificate" % (label("ca_bundle"), self.ca_bundle, "not readable by this user" if
                                               os.path.isfile(self.ca_bundle) else "not a file that exists"))
        core = botocore.session.Session()
        if self.ca_bundle:  # also for the credential providers' own clients (STS for web identity)
            core.set_config_variable("ca_bundle", self.ca_bundle)
        try:
            if profile:
                core.set_config_variable("profile", profile)
            if access_key or secret_key or session_token:
                core.set_credentials(access_key, secret_key, session_token)
            if region:
                core.set_config_variable("region", region)
            profile_retries = _profile_retries(core.get_scoped_config(), profile, label) if profile else None
            session_region = core.get_config_variable("region")
        except botocore.exceptions.ProfileNotFound:
            files = [os.path.expanduser(core.get_config_variable(name) or "")
                     for name in ("config_file", "credentials_file")]
            raise ConfigError("AWS profile %r (%s) is in neither %s nor %s: add it to one of them, point "
                              "AWS_CONFIG_FILE or AWS_SHARED_CREDENTIALS_FILE at the files that hold it, or fix %s"
                              % (profile, label("profile"), files[0], files[1], label("profile")))
        config = client_config(self.retry.window, aws_config, max_attempts, retry_mode, profile_retries, label)
        if not validate_certs:
            LOG.warning("%s", unverified_tls_warning(endpoint_url, label))
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once, above
        self.region = session_region or FALLBACK_REGION
        self.client = core.create_client("s3", region_name=self.region, endpoint_url=endpoint_url, config=config,
                                         verify=False if not validate_certs else (self.ca_bundle or None))

    @classmethod
    def from_settings(cls, settings, retry_window=None):
        """The store a :class:`~.config.Settings` points at (``retry_window`` shortens the settings' one)."""
        window = settings.retry_window if retry_window is None else min(retry_window, settings.retry_window)
        store = cls(settings.bucket, region=settings.region, endpoint_url=settings.endpoint_url,
                    access_key=settings.access_key, secret_key=settings.secret_key,
                    session_token=settings.session_token, storage_class=settings.storage_class,
                    retry_window=window, label=settings.label, profile=settings.profile, ca_bundle=settings.ca_bundle,
                    validate_certs=settings.validate_certs, aws_config=settings.aws_config,
                    max_attempts=settings.max_attempts, retry_mode=settings.retry_mode,
                    object_lock=lock_of_settings(settings) if settings.object_lock_days else None)
        store.restore_tier, store.restore_days = settings.restore_tier, settings.restore_days
        return store

    def url(self, key=""):
        """``s3://bucket/key`` for messages."""
        return "s3://%s/%s" % (self.bucket, key)

    def retry_counts(self, since=None):
        """What this store retried so far (a dict of RETRY_COUNTS); with ``since``, an earlier answer, only what after.

        ``requests_retried``: requests that failed transiently and were sent again; ``retries``: the extra
        attempts they took; ``download_resumes``: downloads cut mid-body that went on from the byte reached.
        """
        with self._counts_lock:
            counts = dict(self._counts)
        if since:
            counts = dict((name, counts[name] - since.get(name, 0)) for name in RETRY_COUNTS)
        return counts

    def _count(self, name):
        with self._counts_lock:
            self._counts[name] += 1

    def _call(self, action, key, func, **kwargs):
        """``func(**kwargs)``, one request, retried (see :meth:`_retrying`)."""
        return self._retrying(action, key, functools.partial(func, **kwargs))

    def _retrying(self, action, key, attempt, recover=None, budget=None, cancel=None):
        """``attempt()`` (one request), tried again after transient failures until the retry window is spent.

        Failures are translated (StorageError, NotFoundError...); the last transient one says how long it
        lasted. ``recover(exc)`` is asked about a lasting failure that follows a transient one (whose answer
        may have been lost after the store acted): True when the store already holds what was asked, and
        this returns None. ``budget`` shortens the window; ``cancel`` (an Event) stops the retries.
        """
        timer = self.retry.start(budget, cancel)
        while True:
            try:
                return attempt()
            except _BOTO_ERRORS as exc:
                error = translate_error(exc, action, self.bucket, key, self.endpoint_url, self.label, self.ca_bundle)
                if not is_transient(exc):
                    if timer.failures and recover is not None and self._recovered(recover, exc, action, key):
                        return None
                    if action == "GetObject" and _error_code(exc) == "InvalidObjectState":
                        raise self.archived(key)
                    raise error
                wait = timer.next_wait()
                if wait is None:
                    raise error if timer.cancelled() else self._gave_up(error, timer)
                LOG.warning("S3 %s of %s failed (%s): retrying in %.1fs, %ds left of the %ds retry window (%s)",
                            action, self.url(key), describe_cause(exc), wait, max(timer.left(), 0), timer.window,
                            self.label("retry_window"))
                if not timer.wait(wait):
                    raise error
                if timer.failures == 1:
                    self._count("requests_retried")
                self._count("retries")

    def _recovered(self, recover, exc, action, key):
        """Whether ``recover(exc)`` finds that an earlier attempt, whose answer was lost, did what was asked."""
        try:
            done = recover(exc)
        except BackupError:
            return False
        if done:
            LOG.warning("S3 %s of %s: the answer to an earlier attempt was lost, and the store shows it was done (%s "
                        "now answers %s)", action, self.url(key), action, describe_cause(exc))
        return done

    def _gave_up(self, error, timer):
        """``error``, the last of a transient failure that lasted the whole retry window, saying so."""
        if not timer.window:
            return error
        return type(error)("%s; it kept failing for %d s over %d attempt%s (retry window: %d s, %s)"
                           % (error.message, round(timer.elapsed()), timer.failures, "s" if timer.failures > 1 else "",
                              timer.window, self.label("retry_window")))

    def _pages(self, action, prefix, func, tokens, **kwargs):
        """Every page of a listing, each page's request retried; ``tokens`` maps a page's next-token fields to request
        parameters."""
        while True:
            page = self._call(action, prefix, func, **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs.update((param, page[field]) for field, param in tokens.items() if page.get(field) is not None)

    def check_bucket(self, prefix=""):
        """Fail early and clearly if the bucket is missing, unreachable or ``prefix`` is not ours to list.

        A one-key listing under ``prefix``, not HeadBucket: AWS authorizes HeadBucket as
        s3:ListBucket on the whole bucket, which a least-privilege policy (ListBucket only
        under this host's prefixes) denies. Its error answers carry a body, so an endpoint
        that is not S3 at all is told apart here (translate_error).
        """
        self._call("ListObjectsV2", prefix, self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, MaxKeys=1)

    def list_objects(self, prefix, delimiter=None):
        """Every object under ``prefix`` as dicts (key, size, last_modified, storage_class), paginated.

        With ``delimiter`` ("/"), only the objects directly under ``prefix``.
        """
        extra = {"Delimiter": delimiter} if delimiter else {}
        for page in self._pages("ListObjectsV2", prefix, self.client.list_objects_v2,
                                {"NextContinuationToken": "ContinuationToken"}, Bucket=self.bucket, Prefix=prefix,
                                **extra):
            for item in page.get("Contents", []):
                yield {"key": item["Key"], "size": item["Size"], "last_modified": item["LastModified"],
                       "storage_class": item.get("StorageClass", "STANDARD")}

    def head(self, key):
        """Object attributes, or None when there is no such object."""
        try:
            return self._call("HeadObject", key, self.client.head_object, Bucket=self.bucket, Key=key)
        except NotFoundError:
            return None

    def exists(self, key):
        """Whether an object exists at ``key``."""
        return self.head(key) is not None

    def get_bytes(self, key):
        """A small object's content (metadata)."""
        return self.get_bytes_and_etag(key)[0]

    def get_bytes_and_etag(self, key):
        """A small object's content and its ETag (for a later write conditional on it being unchanged)."""
        return self._retrying("GetObject", key, functools.partial(self._get_whole, Bucket=self.bucket, Key=key))

    def get_range(self, key, start, length):
        """``length`` bytes of an object from ``start`` (a header check without a download)."""
        return self._retrying("GetObject", key, functools.partial(
            self._get_whole, Bucket=self.bucket, Key=key, Range="bytes=%d-%d" % (start, start + length - 1)))[0]

    def _get_whole(self, **kwargs):
        """One GetObject and its whole body: ``(bytes, ETag)``."""
        response = self.client.get_object(**kwargs)
        with response["Body"] as body:
            return body.read(), response.get("ETag")

    def iter_object(self, key, chunk_size=READ_CHUNK, start=0, end=None, etag=None):
        """Stream an object in chunks; yields bytes. Size is checked by the caller.

        ``start``/``end`` (exclusive): only those bytes (a ranged GET); ``etag``: only that version of the object
        (If-Match), so that several streams of one object read the same version. A connection lost mid-body goes
        on from the byte reached (see :class:`_ResumableBody`).
        """
        body = _ResumableBody(self, key, start, end, etag)
        try:
            while True:
                chunk = body.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def put_bytes(self, key, data, content_type="application/json", if_none_match=False, if_match=None):
        """Write a small object in one request (metadata: the commit marker).

        ``if_none_match``: create only if no object is there; ``if_match`` (an ETag): replace only the
        version read. A lost race raises ConflictError. A store that does not implement conditional
        writes (answers NotImplemented) gets the write without the condition, with a warning
        (docs/CLI.md lists which stores honour them); ``if_none_match`` then checks first with HEAD.
        A retry refused because an earlier attempt, whose answer was lost, did write is no conflict:
        the object is read back and compared.
        """
        kwargs = dict(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, StorageClass="STANDARD")
        kwargs.update(self.lock_arguments())
        condition = {}
        if if_none_match:
            condition["IfNoneMatch"] = "*"
        elif if_match:
            condition["IfMatch"] = if_match
        if not condition or not self.conditional_writes:
            if if_none_match and self.exists(key):
                raise ConflictError("PutObject of %s was refused: an object is already there (this store does not "
                                    "take conditional writes, so this was checked first)" % self.url(key))
            return self._call("PutObject", key, self.client.put_object, **kwargs)
        try:
            return self._retrying("PutObject", key, functools.partial(self.client.put_object, **dict(kwargs, **condition)),
                                  recover=lambda exc: self._holds(key, data))
        except NotFoundError:
            if if_match:  # If-Match on an object that is gone: it was deleted since it was read
                raise ConflictError("PutObject of %s was refused: the object was deleted since it was read (by a "
                                    "prune, or by hand)" % self.url(key))
            raise
        except StorageError as exc:
            if not _unsupported(exc):
                raise
            self._no_conditional_writes(exc)
            return self.put_bytes(key, data, content_type, if_none_match, if_match)

    def _holds(self, key, data):
        """Whether the object at ``key`` is exactly ``data``."""
        try:
            return self.get_bytes(key) == bytes(data)
        except NotFoundError:
            return False

    def _no_conditional_writes(self, exc):
        """Remember that this store refuses conditional writes, and say so once."""
        self.conditional_writes = False
        LOG.warning("the S3 store at %s does not implement conditional writes (%s): metadata writes fall back to "
                    "last-writer-wins, so do not run rekey, prune or backups of one database at the same time",
                    self.endpoint_url or "AWS", exc)

    def copy_from(self, source, key):
        """Server-side copy (CopyObject) of ``key`` in ``source``'s bucket (a store on this endpoint, with these
        credentials) to the same key here, in this store's storage class; objects up to COPY_LIMIT bytes."""
        return self._call("CopyObject", key, self.client.copy_object, Bucket=self.bucket, Key=key,
                          CopySource={"Bucket": source.bucket, "Key": key}, StorageClass=self.storage_class,
                          MetadataDirective="COPY")

    def delete(self, key):
        """Delete one object."""
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def get_tags(self, key):
        """An object's tags as a dict."""
        answer = self._call("GetObjectTagging", key, self.client.get_object_tagging, Bucket=self.bucket, Key=key)
        return dict((tag["Key"], tag["Value"]) for tag in answer.get("TagSet", []))

    def put_tags(self, key, tags):
        """Replace an object's tags with ``tags`` (a dict): what the bucket's lifecycle rules select by."""
        self._call("PutObjectTagging", key, self.client.put_object_tagging, Bucket=self.bucket, Key=key,
                   Tagging={"TagSet": [{"Key": name, "Value": value} for name, value in sorted(tags.items())]})

    def archived(self, key):
        """The ArchivedError of an object in an archive storage class (GLACIER, DEEP_ARCHIVE) that is not readable:
        the S3 restore request is started here (``restore_tier``, kept ``restore_days`` days) unless one is under way,
        and the error says when the object will be readable (about, by tier) and to run again then."""
        attrs = self.head(key) or {}
        storage = attrs.get("StorageClass") or "GLACIER"
        hours = archive_hours(storage, self.restore_tier)

        def request():
            """RestoreObject; False when a restore is under way already (another run asked first)."""
            try:
                self.client.restore_object(Bucket=self.bucket, Key=key, RestoreRequest={
                    "Days": self.restore_days, "GlacierJobParameters": {"Tier": self.restore_tier}})
                return True
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) == "RestoreAlreadyInProgress":
                    return False
                raise
        if 'ongoing-request="true"' in (attrs.get("Restore") or "") or not self._retrying("RestoreObject", key, request):
            return ArchivedError("%s is archived in %s and its restore is under way (requested earlier): it is "
                                 "readable within about %s after the request; run again then"
                                 % (self.url(key), storage, hours), key=key, storage_class=storage)
        LOG.warning("%s is archived in %s: started its S3 restore (tier %s, a readable copy for %d days)",
                    self.url(key), storage, self.restore_tier, self.restore_days)
        return ArchivedError("%s is archived in %s: its S3 restore was started now (tier %s, %s; the copy stays "
                             "readable for %d days): it is readable in about %s; run the same command again then"
                             % (self.url(key), storage, self.restore_tier, self.label("restore_tier"),
                                self.restore_days, hours), key=key, storage_class=storage, started=True)

    def open_multipart(self, key, base_part_size=MIN_PART_SIZE, concurrency=UPLOAD_CONCURRENCY):
        """Start a multipart upload of ``key``; see :class:`MultipartUpload`."""
        return MultipartUpload(self, key, base_part_size, concurrency)

    def list_multipart_uploads(self, prefix):
        """Open multipart uploads under ``prefix`` as dicts (key, upload_id, initiated)."""
        for page in self._pages("ListMultipartUploads", prefix, self.client.list_multipart_uploads,
                                {"NextKeyMarker": "KeyMarker", "NextUploadIdMarker": "UploadIdMarker"},
                                Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Uploads", []):
                yield {"key": item["Key"], "upload_id": item["UploadId"], "initiated": item["Initiated"]}

    def list_parts(self, key, upload_id):
        """The parts an open multipart upload holds, as dicts (number, size, last_modified)."""
        for page in self._pages("ListParts", key, self.client.list_parts, {"NextPartNumberMarker": "PartNumberMarker"},
                                Bucket=self.bucket, Key=key, UploadId=upload_id):
            for item in page.get("Parts", []):
                yield {"number": item["PartNumber"], "size": item["Size"], "last_modified": item["LastModified"]}

    def abort_multipart(self, key, upload_id, budget=None):
        """Abort one multipart upload (its parts are discarded by the store); ``budget`` shortens the retry window.

        A retry told NoSuchUpload is done: the earlier attempt, whose answer was lost, aborted it.
        """
        self._retrying("AbortMultipartUpload", key, functools.partial(
            self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id),
            recover=lambda exc: _error_code(exc) == "NoSuchUpload", budget=budget)

    def lock_arguments(self):
        """The Object Lock parameters of a new object (mode, and retain-until now + days), or {} when locking is off."""
        if not self.object_lock:
            return {}
        mode, days = self.object_lock
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=int(days))
        return {"ObjectLockMode": LOCK_MODES[mode], "ObjectLockRetainUntilDate": until.replace(microsecond=0)}

    def check_object_lock(self):
        """Fail (ConfigError) when objects are to be locked and the bucket has no Object Lock; True when it has,
        None when these credentials may not read the bucket's configuration (the first write then says)."""
        if not self.object_lock:
            return None
        try:
            found = self._call("GetObjectLockConfiguration", "", self.client.get_object_lock_configuration,
                               Bucket=self.bucket)
        except AccessDeniedError as exc:
            LOG.debug("the Object Lock configuration of %s is not readable here (%s): the first write will tell",
                      self.bucket, exc)
            return None
        except StorageError as exc:
            if "ObjectLockConfigurationNotFound" in exc.message:
                raise no_lock_error(self.bucket, self.label)
            raise
        if (found.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") != "Enabled":
            raise no_lock_error(self.bucket, self.label)
        return True

    def lock_of(self, key):
        """``(mode, retain_until)`` of the current version of ``key`` (mode lowercase, an aware UTC datetime), or None
        when it has no retention (or no such object)."""
        head = self.head(key)
        if not head or not head.get("ObjectLockRetainUntilDate"):
            return None
        return str(head.get("ObjectLockMode", "")).lower(), _utc(head["ObjectLockRetainUntilDate"])

    def ensure_locked(self, key, head, lock):
        """After a multipart upload created with ``lock``: the stored version must carry it. A store that took the
        parameters on CreateMultipartUpload without applying them gets them again on the version (PutObjectRetention).
        Credentials that may neither see nor set the lock (no s3:GetObjectRetention, no s3:PutObjectRetention) get a
        warning: the lock asked for on the upload is S3's to apply; any other failure fails the backup."""
        if head.get("ObjectLockRetainUntilDate"):
            return
        extra = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        retention = {"Mode": lock["ObjectLockMode"], "RetainUntilDate": lock["ObjectLockRetainUntilDate"]}
        LOG.info("%s shows no lock after its upload: locking that version now", self.url(key))
        try:
            self._call("PutObjectRetention", key, self.client.put_object_retention, Bucket=self.bucket, Key=key,
                       Retention=retention, **extra)
        except AccessDeniedError as exc:  # S3 leaves the lock out of HEAD for credentials without s3:GetObjectRetention
            LOG.warning("the lock of %s, asked for on its upload, could not be confirmed (%s): give this host "
                        "s3:GetObjectRetention and s3:PutObjectRetention on its prefix", self.url(key), exc)

    def list_versions(self, prefix):
        """Every version and delete marker under ``prefix`` (a versioned bucket), as dicts: key, version_id, latest,
        deleted (a delete marker), size (None for a marker), last_modified; per key, newest first."""
        for page in self._pages("ListObjectVersions", prefix, self.client.list_object_versions,
                                {"NextKeyMarker": "KeyMarker", "NextVersionIdMarker": "VersionIdMarker"},
                                Bucket=self.bucket, Prefix=prefix):
            items = [(item, False) for item in page.get("Versions", [])]
            items += [(item, True) for item in page.get("DeleteMarkers", [])]
            items.sort(key=lambda pair: (pair[0]["Key"], not pair[0].get("IsLatest"),
                                         -_utc(pair[0]["LastModified"]).timestamp()))
            for item, marker in items:
                yield {"key": item["Key"], "version_id": item.get("VersionId"), "latest": bool(item.get("IsLatest")),
                       "deleted": marker, "size": None if marker else item.get("Size"),
                       "last_modified": _utc(item["LastModified"])}

    def delete_version(self, key, version_id):
        """Delete one version (or delete marker) of ``key``: removing a delete marker brings the version below back."""
        self._call("DeleteObject", key, self.client.delete_object, Bucket=self.bucket, Key=key, VersionId=version_id)


class _ResumableBody:
    """An object's body, read in order; a connection lost mid-body goes on with a ranged GET from the byte reached.

    Resumed reads ask for the version first read (If-Match its ETag): an object replaced meanwhile is
    not stitched together from two versions, and the download fails naming the byte it reached. The
    bytes are checked end to end all the same by the reader (each segment's authentication, the whole
    object's SHA-256 against the signed metadata), so a store that ignored If-Match could not splice
    either. Each piece is retried within the window: a download fails once it makes no progress for a
    whole window, and its error names the byte it stopped at.
    """

    def __init__(self, store, key, start=0, end=None, etag=None):
        self.store = store
        self.key = key
        self.start = start
        self.end = end
        self.position = 0  # bytes read from ``start``
        self.size = None  # the object's size, from the first answer
        self.etag = etag
        self._body = None

    def read(self, size):
        """Up to ``size`` bytes (fewer only at the end: b"" there), read in pieces of at most RESUME_PIECE.

        A piece lost with its connection is read again (retried within the window) from the byte reached.
        """
        pieces = []
        left = size
        while left > 0:
            piece = self._read_piece(min(left, RESUME_PIECE))
            if not piece:
                break
            pieces.append(piece)
            left -= len(piece)
        return b"".join(pieces)

    def reached(self):
        """Where the download stopped, for messages: 'byte 1048576 of 4194304 (25%)'."""
        at = self.start + self.position
        if not self.size:
            return "byte %d" % at
        return "byte %d of %d (%d%%)" % (at, self.size, 100 * at // self.size)

    def _read_piece(self, size):
        try:
            return self.store._retrying("GetObject", self.key, functools.partial(self._read_once, size))
        except ConflictError:
            raise StorageError("%s changed while it was being downloaded: at %s it no longer has the ETag %s it had "
                               "when the download began, so nothing more is read from it (two versions are never "
                               "mixed); if nobody replaced it on purpose, someone with write access to the bucket "
                               "did: check it, then run again" % (self.store.url(self.key), self.reached(), self.etag))
        except NotFoundError:
            if self.etag is None:  # not there from the start
                raise
            raise StorageError("%s was deleted while it was being downloaded, at %s: check who deletes objects in the "
                               "bucket (a prune of this backup?)" % (self.store.url(self.key), self.reached()))
        except StorageError as exc:
            if self.etag is not None:  # a download under way: say how far it got
                exc.message = "%s; the download stopped at %s" % (exc.message, self.reached())
            raise

    def _read_once(self, size):
        if self.end is not None:
            size = min(size, self.end - self.start - self.position)
            if size <= 0:
                return b""
        if self._body is None:
            self._body = self._open()
        try:
            chunk = self._body.read(size)
        except Exception:
            self.close()  # the next attempt opens the body again, from self.position
            raise
        self.position += len(chunk)
        return chunk

    def _open(self):
        kwargs = dict(Bucket=self.store.bucket, Key=self.key)
        if self.start or self.position or self.end is not None:
            kwargs["Range"] = "bytes=%d-%s" % (self.start + self.position, "" if self.end is None else self.end - 1)
        if self.etag:
            kwargs["IfMatch"] = self.etag
        response = self.store.client.get_object(**kwargs)
        if self.position:
            self.store._count("download_resumes")
            LOG.warning("the download of %s goes on from %s (a ranged GET of the same version)",
                        self.store.url(self.key), self.reached())
        elif self.size is None and "Range" not in kwargs:
            self.size = response.get("ContentLength")
        self.etag = self.etag or response.get("ETag")
        return response["Body"]

    def close(self):
        """Close the open response, if any."""
        body, self._body = self._body, None
        if body is not None:
            body.close()


def _abort_unknown_uploads(store, key):
    """After an interruption (SIGTERM, Ctrl-C) during CreateMultipartUpload: the store may have opened the upload
    without this process hearing its id. Abort the open uploads of ``key`` (a new backup's own name), so an
    interrupted backup leaves none; when they cannot be listed or aborted, prune aborts them once stale. Never raises."""
    try:
        for upload in list(store.list_multipart_uploads(key)):
            if upload["key"] == key:
                store.abort_multipart(key, upload["upload_id"], budget=ABORT_BUDGET)
    except Exception as exc:  # pylint: disable=broad-except  # the interruption is what the caller reports
        LOG.warning("an upload of %s may have been opened as the run was interrupted, and could not be aborted (%s): "
                    "the next `quankey-backup prune` aborts it once it is 24 h old", store.url(key), exc)


class MultipartUpload:
    """A multipart upload fed by ``write()``: parts go out on background threads.

    Memory is bounded: one part being filled plus at most ``concurrency`` parts
    in flight. ``complete()`` returns the stored size after checking it; any
    failure, and ``abort()``, abort the upload so no partial object remains.
    Each request is retried within the store's window; once one part fails for
    good, or the upload is aborted, the other parts stop retrying.
    """

    def __init__(self, store, key, base_part_size, concurrency):
        self.store = store
        self.key = key
        self.base_part_size = base_part_size
        self.bytes_written = 0
        self._buffer = None  # the part being filled: a bytearray of the part's size, sent as is when full
        self._filled = 0
        self._parts = {}
        self._error = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._threads = []
        self._next_part = 1
        self._closed = False
        self._stop_retrying = threading.Event()
        self.lock = store.lock_arguments()
        try:
            response = store._call("CreateMultipartUpload", key, store.client.create_multipart_upload,
                                   Bucket=store.bucket, Key=key, StorageClass=store.storage_class,
                                   ContentType="application/octet-stream", **self.lock)
        except KeyboardInterrupt:
            _abort_unknown_uploads(store, key)
            raise
        self.upload_id = response["UploadId"]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort(exc)
        return False

    def _current_part_size(self):
        return part_size_for(self._next_part, self.base_part_size)

    def write(self, data):
        """Queue bytes; full parts are sent in the background (blocks while too many are in flight).

        Each byte is copied once, into a buffer of the part's size that becomes the part's body
        (no slicing copies: they cost CPU and a transient part's worth of memory each).
        """
        self._raise_if_failed()
        view = memoryview(data).cast("B")
        self.bytes_written += len(view)
        while len(view):
            if self._buffer is None:
                self._buffer = bytearray(self._current_part_size())
            take = min(len(view), len(self._buffer) - self._filled)
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == len(self._buffer):
                part, self._buffer, self._filled = self._buffer, None, 0
                self._send(part)

    def _send(self, body):
        if self._next_part > MAX_PARTS:
            raise StorageError("upload of %s needs more than %d parts: the stream is far larger than estimated"
                               % (self.store.url(self.key), MAX_PARTS))
        number = self._next_part
        self._next_part += 1
        self._slots.acquire()
        self._raise_if_failed(release=True)
        thread = threading.Thread(target=self._upload_part, args=(number, body), name="upload-part-%d" % number)
        thread.daemon = True
        self._threads.append(thread)
        thread.start()

    def _upload_part(self, number, body):
        store = self.store
        try:
            response = store._retrying("UploadPart", self.key, functools.partial(
                store.client.upload_part, Bucket=store.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                Body=body), cancel=self._stop_retrying)
            with self._lock:
                self._parts[number] = response["ETag"]
        except Exception as exc:  # handed to the producer thread, which raises it
            with self._lock:
                if self._error is None:
                    self._error = exc
            self._stop_retrying.set()
        finally:
            self._slots.release()

    def _raise_if_failed(self, release=False):
        with self._lock:
            error = self._error
        if error is not None:
            if release:
                self._slots.release()
            raise error

    def _join(self):
        for thread in self._threads:
            thread.join()
        self._threads = []

    def complete(self):
        """Send the last part, complete the upload, and return the stored object's size."""
        if self._filled or self._next_part == 1:
            part = self._buffer[:self._filled] if self._buffer is not None else bytearray()
            self._buffer = None
            self._filled = 0
            self._send(part)
        self._join()
        self._raise_if_failed()
        parts = [{"PartNumber": number, "ETag": self._parts[number]} for number in sorted(self._parts)]
        self._complete(parts)
        self._closed = True
        head = self.store.head(self.key)
        stored = head["ContentLength"] if head else None
        if stored != self.bytes_written:
            raise StorageError("stored object %s has %s bytes but %d were uploaded"
                               % (self.store.url(self.key), stored, self.bytes_written))
        if self.lock:
            self.store.ensure_locked(self.key, head, self.lock)
        return stored

    def _complete(self, parts):
        """CompleteMultipartUpload, creating the object only if none is there (else ConflictError; the caller aborts).

        A retry refused (PreconditionFailed, NoSuchUpload) because an earlier attempt, whose answer was
        lost, did complete is no conflict: the object is there with the size uploaded.
        """
        store = self.store
        complete = functools.partial(store.client.complete_multipart_upload, Bucket=store.bucket, Key=self.key,
                                     UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        if store.conditional_writes:
            try:
                store._retrying("CompleteMultipartUpload", self.key, functools.partial(complete, IfNoneMatch="*"),
                                recover=self._landed)
                return
            except StorageError as exc:
                if not _unsupported(exc):
                    raise
                store._no_conditional_writes(exc)
        if store.exists(self.key):
            raise ConflictError("CompleteMultipartUpload of %s was refused: an object is already there (this store "
                                "does not take conditional writes, so this was checked first)" % store.url(self.key))
        store._retrying("CompleteMultipartUpload", self.key, complete, recover=self._landed)

    def _landed(self, exc):
        """Whether the object is stored with every byte written (a Complete whose answer was lost did complete)."""
        head = self.store.head(self.key)
        return head is not None and head.get("ContentLength") == self.bytes_written

    def abort(self, failure=None):
        """Abort the upload (waits for parts in flight first), retried for at most ABORT_BUDGET seconds.

        When the store stays out of reach, the upload stays open: ``failure`` (by default the exception
        being handled, the reason to abort) then says so, naming the key and `prune`, which aborts it.
        Never raises.
        """
        if self._closed:
            return
        failure = failure if failure is not None else sys.exc_info()[1]
        self._closed = True
        self._stop_retrying.set()
        self._join()
        try:
            self.store.abort_multipart(self.key, self.upload_id, budget=ABORT_BUDGET)
        except Exception as exc:  # pylint: disable=broad-except  # the store may be down: the upload is left to prune
            note = ("the multipart upload of %s is still open (the abort failed too): the next `quankey-backup prune` "
                    "aborts it once it is 24 h old" % self.store.url(self.key))
            LOG.warning("%s; upload id %s, abort failure: %s", note, self.upload_id, exc)
            if isinstance(failure, BackupError):
                failure.message = "%s; %s" % (failure.message, note)
