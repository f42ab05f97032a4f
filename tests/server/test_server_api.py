"""The curated public names of ``trainvitals.server``."""

from __future__ import annotations

import trainvitals.server as server


def test_server_all_is_curated_and_importable() -> None:
    assert sorted(server.__all__) == [
        "SQLiteStore", "ServerThread", "Settings", "Store", "create_app", "serve_forever"]
    for name in server.__all__:
        assert getattr(server, name) is not None, name
    public = {n for n in vars(server) if not n.startswith("_")}
    # Everything else public is a submodule, not an accidental re-export.
    assert {n for n in public - set(server.__all__)
            if not isinstance(getattr(server, n), type(server))} == set()


def test_settings_reject_short_tokens_and_unknown_options() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="at least 8 characters"):
        server.Settings(ingest_token="short")
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        server.Settings(ingest_tokn="long-enough-token")  # type: ignore[call-arg]
