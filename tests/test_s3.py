"""A workspace and a source on S3 (moto's server on loopback), through fsspec/s3fs."""

from __future__ import annotations

from pathlib import Path

import pytest

from exokiratory import Workspace
from exokiratory.core.config import Source

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_scan_and_run_on_s3(s3_endpoint: str, photos: Path) -> None:
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("exo-bucket")
    for f in sorted(photos.rglob("*.*")):
        fs.pipe_file(f"exo-bucket/src/{f.relative_to(photos)}", f.read_bytes())
    ws = Workspace.init(
        "s3://exo-bucket/ws",
        [Source(path="s3://exo-bucket/src", storage_options=opts)],
        storage_options=opts,
    )
    rep = ws.scan()
    assert rep.new_images == 5
    assert ws.scan().unchanged == 5
    assert ws.run("probe", workers=1)[0].processed == 5
    assert ws.sql("SELECT count(*) AS n FROM probe WHERE error IS NULL").to_pylist() == [{"n": 5}]
    assert fs.ls("exo-bucket/ws/manifests/images")  # parts really live in the bucket
    again = Workspace("s3://exo-bucket/ws", storage_options=opts)
    assert again.images().num_rows == 5
