"""TensorBoard scalars written in the caller's thread, so that a full disk is an error the loop sees at once
(:class:`~grendel_py.errors.WriteError` naming the folder) rather than a traceback from a writer thread.

The file is what ``torch.utils.tensorboard.SummaryWriter`` writes: ``events.out.tfevents.<time>.<host>.<pid>``,
records of ``Event`` protobufs (length, masked CRC-32C of the length, data, masked CRC-32C of the data), the
first one naming the file version, then a session start at ``purge_step`` (TensorBoard hides the events an
earlier, stopped run wrote from that step on), then the scalars.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from pathlib import Path

from grendel_py.errors import WriteError
from grendel_py.fileio import ensure_folder, write_error

WHAT = "TensorBoard events"


class EventFile:
    """A new event file in ``folder``, starting a session at ``purge_step``."""

    def __init__(self, folder: Path, purge_step: int):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.Event, self.Summary = Event, Summary
        self.folder = Path(folder)
        ensure_folder(self.folder)
        now = time.time()
        self.path = self.folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self.file = self._do(lambda: open(self.path, "ab"))  # noqa: SIM115 (closed by close())
        self._record(Event(wall_time=now, file_version="brain.Event:2"))
        self._record(Event(wall_time=now, step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        summary = self.Summary(value=[self.Summary.Value(tag=tag, simple_value=float(value))])
        self._record(self.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Hand what was written to the system (a full disk shows here at the latest)."""
        self._do(self.file.flush)

    def close(self) -> None:
        """Close the file; a failure to write what was left is not raised again (a flush raised it first)."""
        with contextlib.suppress(OSError):
            self.file.close()

    def _record(self, event) -> None:
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

        crc = pywrap_tensorflow.masked_crc32c
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data))
        self._do(lambda: self.file.write(record))

    def _do(self, action):
        try:
            return action()
        except OSError as e:
            failed = write_error(e, self.folder, WHAT)
            raise (failed or WriteError(self.folder, WHAT, str(e))) from None
