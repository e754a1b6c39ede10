"""Counting the photo decodes of a scene (for the photo cache and ground-truth tests)."""

from __future__ import annotations

import pytest


def count_decodes(scene, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The uids of the cameras whose photos ``scene`` decodes from now on, in order (a live list)."""
    decoded: list[int] = []
    load = type(scene).load_image

    def counting(self, camera):
        decoded.append(camera.uid)
        return load(self, camera)

    monkeypatch.setattr(type(scene), "load_image", counting)
    return decoded
