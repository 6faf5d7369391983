"""A C2SP-style witness (c2sp.org/tlog-witness): cosign only append-only growth.

A witness lives in a folder::

    witness.key    its Ed25519 secret key (PRIVATE+KEY form, mode 0600)
    witness.vkey   its cosigner vkey (type 0x04), to publish
    state.json     per origin: the log's key and the last checkpoint cosigned
    .lock          taken (flock) around every check-and-persist

A request is tlog-witness's ``add-checkpoint`` body
(:class:`~.witnessrequest.CosignRequest`): the size of the last checkpoint
the client believes the witness cosigned (``old``), an RFC 9162 consistency
proof from that size (one base64 hash a line), an empty line and the new
signed checkpoint. Refusals carry the spec's HTTP status as
:attr:`WitnessRefused.status`: 404 unknown origin, 403 no valid signature by
the origin's key, 400 a malformed body or ``old`` above the size, 409 ``old``
is not the size last cosigned (truncation is named as such) or the same size
with another root (a fork or rewrite), 422 a proof that does not verify (a
size that does not extend the last one).

Which log key a witness trusts: the ones it is configured with
(``init(logs=...)``, :meth:`Witness.add_log`). With ``trust_on_first_use`` an
unknown origin's first checkpoint, signed by a key named after the origin,
fixes that key: a witness that cannot be configured beforehand then still
refuses every later fork, truncation or rewrite, but not a forged first
checkpoint (anyone can start a log under a new origin).

The new state is written atomically and fsynced *before* the cosignature is
returned, under an exclusive lock, so a killed witness never forgets a
checkpoint it answered for, and two concurrent requests cannot roll it back.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..quoting import clip
from .canonical import is_hex, parse_json
from .checkpoint import (
    EMPTY_ROOT,
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_checkpoint,
)
from .cosignature import CosignerKey, cosign, cosigner_of
from .inputfile import read_head
from .notes import (
    NoteError,
    NoteSignature,
    SignerKey,
    VerifierKey,
    generate_signer_key,
    parse_note,
    parse_verifier_key,
    read_signer_key,
    write_file_atomically,
    write_key_file,
)
from .witnessrequest import CosignRequest, WitnessAnswer, WitnessRefused, check_growth

__all__ = [
    "CosignRequest",
    "Witness",
    "WitnessAnswer",
    "WitnessError",
    "WitnessRefused",
]

KEY_FILE: Final = "witness.key"
VKEY_FILE: Final = "witness.vkey"
STATE_FILE: Final = "state.json"
STATE_FORMAT: Final = "flchain-witness/1"
MAX_STATE_BYTES: Final = 1 << 26
"""Largest witness state read (64 MiB: some 100,000 logs)."""


class WitnessError(Exception):
    """A witness folder cannot be created, opened or read."""


@dataclass(frozen=True)
class _Log:
    key: str
    learned: str
    size: int
    root: str
    note: str | None


class Witness:
    """A witness folder (see the module docstring); open one, or :meth:`init`.

    Parameters
    ----------
    folder : str | Path
        The witness's folder.
    clock : Callable[[], float] (default: time.time)
        The cosignatures' timestamps (POSIX seconds); pass a virtual clock for
        reproducible runs. The clock decides nothing but the timestamp.
    """

    def __init__(self, folder: str | Path, *, clock: Any = time.time) -> None:
        self.folder = Path(folder)
        try:
            self._signer = read_signer_key(self.folder / KEY_FILE)
        except (OSError, NoteError) as exc:
            raise WitnessError(
                f"{self.folder} is not a witness folder: {exc}"
            ) from None
        self._clock = clock
        self.tofu = bool(self._state()["trust_on_first_use"])

    @classmethod
    def init(
        cls,
        folder: str | Path,
        name: str,
        *,
        logs: Iterable[VerifierKey] = (),
        trust_on_first_use: bool = False,
        signer: SignerKey | None = None,
    ) -> Witness:
        """Create a witness folder with a new key (or ``signer``).

        Raises
        ------
        WitnessError
            If the folder already holds a witness.
        """
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        key = signer or generate_signer_key(name)
        try:
            write_key_file(target / KEY_FILE, key)
        except FileExistsError:
            raise WitnessError(f"{target} holds a witness already") from None
        vkey = cosigner_of(key).encode() + "\n"
        write_file_atomically(
            target / VKEY_FILE, vkey.encode(), mode=0o644, overwrite=True
        )
        state = {
            "format": STATE_FORMAT,
            "trust_on_first_use": trust_on_first_use,
            "logs": {
                log.name: {
                    "key": log.encode(),
                    "learned": "configured",
                    "size": 0,
                    "root": EMPTY_ROOT.hex(),
                    "note": None,
                }
                for log in logs
            },
        }
        _write_state(target, state)
        return cls(target)

    @property
    def key(self) -> CosignerKey:
        """The witness's public cosigner key."""
        return cosigner_of(self._signer)

    def sign_identity(self, message: bytes) -> bytes:
        """The witness key's Ed25519 signature of ``message``, to prove it holds
        the key; never of a message a cosignature could be (domain separation).
        """
        if message.startswith(b"cosignature/"):
            raise WitnessError("refusing to sign a message in the cosignature domain")
        return bytes(self._signer.signing_key.sign(message).signature)

    def latest(self, origin: str) -> Checkpoint | None:
        """The last checkpoint cosigned for ``origin`` (``None`` if none)."""
        log = self._logs().get(origin)
        if log is None or log.size == 0:
            return None
        return Checkpoint(origin, log.size, bytes.fromhex(log.root))

    def add_log(self, key: VerifierKey) -> None:
        """Trust ``key`` for the origin it is named after (an origin keeps the
        key it has)."""
        with self._locked():
            state = self._state()
            known = state["logs"].get(key.name)
            if known is not None and known["key"] != key.encode():
                raise WitnessError(f"{key.name} is known with key {known['key']}")
            state["logs"].setdefault(
                key.name,
                {
                    "key": key.encode(),
                    "learned": "configured",
                    "size": 0,
                    "root": EMPTY_ROOT.hex(),
                    "note": None,
                },
            )
            _write_state(self.folder, state)

    def add_checkpoint(self, request: CosignRequest) -> NoteSignature:
        """Check a request and cosign its checkpoint, or refuse.

        Returns
        -------
        NoteSignature
            The witness's ``cosignature/v1`` line, after the new state is
            durably stored.

        Raises
        ------
        WitnessRefused
            With the status and reason (nothing is stored).
        """
        try:
            note = parse_note(request.checkpoint)
            checkpoint = parse_checkpoint(note.text)
        except (NoteError, CheckpointError) as exc:
            raise WitnessRefused(400, f"not a signed checkpoint: {exc}") from None
        origin = checkpoint.origin
        with self._locked():
            state = self._state()
            entry = state["logs"].get(origin)
            if entry is None:
                if not self.tofu:
                    raise WitnessRefused(404, f"unknown origin {origin!r}")
                entry = self._learn(request, origin)
            key = parse_verifier_key(entry["key"])
            try:
                open_checkpoint(note, [key])
            except NoteError as exc:
                raise WitnessRefused(
                    403, f"{origin}: not signed by its key {key}: {exc}"
                ) from None
            last = Checkpoint(origin, entry["size"], bytes.fromhex(entry["root"]))
            check_growth(request, last, checkpoint)
            entry = {
                **entry,
                "size": checkpoint.size,
                "root": checkpoint.root.hex(),
                "note": request.checkpoint,
            }
            state["logs"][origin] = entry
            _write_state(self.folder, state)
        return cosign(note.text, self._signer, int(self._clock()))

    def answer(self, body: bytes, log_key: str | None = None) -> WitnessAnswer:
        """The answer to a request body (``log_key`` beside it, for trust on
        first use): the cosignature line, or the refusal and its reason."""
        try:
            request = CosignRequest.decode(body, log_key)
            return WitnessAnswer.of(self.add_checkpoint(request))
        except WitnessRefused as exc:
            return WitnessAnswer.of(exc)

    @staticmethod
    def _learn(request: CosignRequest, origin: str) -> dict[str, Any]:
        """Trust on first use: the log key the first request carries, which
        must be named after the origin (its signature is checked next)."""
        if request.log_key is None:
            raise WitnessRefused(
                404,
                f"unknown origin {origin!r}: trust on first use needs the log's "
                "key in the request",
            )
        try:
            key = parse_verifier_key(request.log_key)
        except NoteError as exc:
            raise WitnessRefused(400, f"the request's log key: {exc}") from None
        if key.name != origin:
            raise WitnessRefused(
                403, f"the request's log key is named {key.name!r}, not {origin!r}"
            )
        return {
            "key": key.encode(),
            "learned": "first-use",
            "size": 0,
            "root": EMPTY_ROOT.hex(),
            "note": None,
        }

    def _logs(self) -> dict[str, _Log]:
        return {
            origin: _Log(
                entry["key"],
                entry["learned"],
                entry["size"],
                entry["root"],
                entry["note"],
            )
            for origin, entry in self._state()["logs"].items()
        }

    def _state(self) -> dict[str, Any]:
        path = self.folder / STATE_FILE
        try:
            data = read_head(path, MAX_STATE_BYTES)
            if len(data) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            state = parse_json(data)
        except (OSError, ValueError) as exc:
            raise WitnessError(f"cannot read the witness state {path}: {exc}") from None
        problem = _state_problem(state)
        if problem is not None:
            raise WitnessError(f"{path} is not a {STATE_FORMAT} state: {problem}")
        checked: dict[str, Any] = state
        return checked

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _state_problem(state: Any) -> str | None:
    """What is wrong with the shape of a parsed witness state, if anything:
    the fields :meth:`Witness.init` writes, of the types it writes them."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return "not an object of that format"
    if not isinstance(state.get("trust_on_first_use"), bool):
        return "trust_on_first_use is not true or false"
    logs = state.get("logs")
    if not isinstance(logs, dict):
        return "logs is not an object"
    for origin, entry in logs.items():
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(k), str) for k in ("key", "learned", "root"))
            and type(entry.get("size")) is int
            and entry["size"] >= 0
            and is_hex(entry["root"], 64)
            and (entry.get("note") is None or isinstance(entry["note"], str))
        ):
            return f"the log {clip(origin, 80)!r} is malformed"
    return None


def _write_state(folder: Path, state: Mapping[str, Any]) -> None:
    data = json.dumps(state, sort_keys=True, indent=1).encode("utf-8")
    write_file_atomically(folder / STATE_FILE, data, mode=0o644, overwrite=True)
