"""Weights/categories download, cache and verification against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer import assets
from consumer.classify import load_classifier
from moments_stream.errors import AssetError
from moments_stream.settings import Settings


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **kw: handler(*a, directory=str(root), **kw))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    server.shutdown()
    server.server_close()


def test_download_once_then_served_from_cache(http_root, tmp_path: Path) -> None:
    base, root, requests = http_root
    (root / "weights.pth.tar").write_bytes(b"x" * 3_000_000)
    cache = tmp_path / "cache"
    first = assets.resolve(f"{base}/weights.pth.tar", cache, expected_size=3_000_000, progress=False)
    second = assets.resolve(f"{base}/weights.pth.tar", cache, expected_size=3_000_000, progress=False)
    assert first == second
    assert first.read_bytes() == b"x" * 3_000_000
    assert requests == ["/weights.pth.tar"]
    assert not list(first.parent.glob("*.part"))


def test_size_mismatch_is_refused_and_not_cached(http_root, tmp_path: Path) -> None:
    base, root, _ = http_root
    (root / "weights.pth.tar").write_bytes(b"truncated")
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match="gave 9 bytes, expected 193,898,685"):
        assets.resolve(f"{base}/weights.pth.tar", cache, expected_size=193_898_685, progress=False)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_hash_mismatch_is_refused(http_root, tmp_path: Path) -> None:
    base, root, _ = http_root
    (root / "w.bin").write_bytes(b"abc")
    with pytest.raises(AssetError, match="SHA-256"):
        assets.resolve(f"{base}/w.bin", tmp_path, expected_sha256="0" * 64, progress=False)


def test_a_wrong_sized_cache_entry_is_downloaded_again(http_root, tmp_path: Path) -> None:
    base, root, requests = http_root
    (root / "w.bin").write_bytes(b"0123456789")
    cached = assets.cache_path_for(f"{base}/w.bin", tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"01234")
    assert assets.resolve(f"{base}/w.bin", tmp_path, expected_size=10, progress=False).read_bytes() == b"0123456789"
    assert requests == ["/w.bin"]


def test_offline_error_names_the_url_and_the_manual_fix(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/moments_RGB_resnet50_imagenetpretrained.pth.tar"
    with pytest.raises(AssetError) as caught:
        assets.resolve(url, tmp_path, progress=False)
    assert url in caught.value.message
    assert "curl" in caught.value.fix and "moments_RGB_resnet50_imagenetpretrained.pth.tar" in caught.value.fix


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="does not exist"):
        assets.resolve(str(tmp_path / "nope.pth.tar"), tmp_path)


def test_categories_download_without_trailing_newline(http_root, tmp_path: Path, categories_v1: Path) -> None:
    base, root, _ = http_root
    (root / "category_momentsv1.txt").write_bytes(categories_v1.read_bytes())
    names = assets.load_categories(assets.resolve(f"{base}/category_momentsv1.txt", tmp_path, progress=False))
    assert len(names) == 339 and names[0] == "clapping" and names[-1] == "typing"


def test_classifier_from_urls(http_root, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path) -> None:
    base, root, requests = http_root
    (root / "w.pth.tar").write_bytes(checkpoint_v1.read_bytes())
    (root / "c.txt").write_bytes(categories_v1.read_bytes())
    settings = Settings.from_env({}).replace(
        weights=f"{base}/w.pth.tar", categories=f"{base}/c.txt", cache_dir=tmp_path
    )
    assert len(load_classifier(settings, progress=False).categories) == 339
    assert len(load_classifier(settings, progress=False).categories) == 339
    assert sorted(requests) == ["/c.txt", "/w.pth.tar"]


@pytest.mark.parametrize(("text", "expected"), [("a\nb\nc", ["a", "b", "c"]), ("a\r\nb\r\n\n", ["a", "b"])])
def test_parse_categories(text: str, expected: list[str]) -> None:
    assert assets.parse_categories(text) == expected


def test_fetch_model_bakes_a_cache_that_serves_offline(
    http_root, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path
) -> None:
    """What runtime/Dockerfile does at build time, then what a cloud function does at start."""
    base, root, requests = http_root
    (root / "w.pth.tar").write_bytes(checkpoint_v1.read_bytes())
    (root / "categories.txt").write_bytes(categories_v1.read_bytes())
    urls = {"MOMENTS_WEIGHTS": f"{base}/w.pth.tar", "MOMENTS_CATEGORIES": f"{base}/categories.txt"}
    baked = tmp_path / "opt-cache"
    env = {**os.environ, **urls, "MOMENTS_CACHE_DIR": str(baked)}
    done = subprocess.run([str(Path(sys.executable).parent / "consumer"), "fetch-model"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = dict(reversed(line.split("  ", 1)) for line in done.stdout.splitlines())
    weights = assets.cache_path_for(urls["MOMENTS_WEIGHTS"], baked)
    assert printed[str(weights)] == assets.sha256_of(checkpoint_v1)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=baked, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2, check.stdout + check.stderr
    # The model converted for the default CPU engine is baked too, beside the weights, keyed by their hash.
    weights = assets.cache_path_for(urls["MOMENTS_WEIGHTS"], baked)
    (converted,) = (weights.parent / "engines").iterdir()
    assert converted.name.startswith(assets.sha256_of(checkpoint_v1)[:16] + "-openvino-")
    assert (converted / "model.xml").is_file() and "converted for openvino" in done.stderr

    for served in root.iterdir():
        served.unlink()  # the release server is gone: a function must not need it
    before = len(requests)
    classifier = load_classifier(Settings.from_env({**urls, "MOMENTS_CACHE_DIR": str(baked)}), progress=False)
    assert len(classifier.categories) == 339 and len(requests) == before
    assert classifier.engine.converted == converted and list(converted.parent.iterdir()) == [converted]


def test_fetch_model_refuses_a_file_with_another_checksum(http_root, tmp_path: Path, categories_v1: Path) -> None:
    base, root, _ = http_root
    (root / "w.pth.tar").write_bytes(b"not the weights")
    (root / "categories.txt").write_bytes(categories_v1.read_bytes())
    env = {**os.environ, "MOMENTS_WEIGHTS": f"{base}/w.pth.tar", "MOMENTS_CATEGORIES": f"{base}/categories.txt",
           "MOMENTS_CACHE_DIR": str(tmp_path / "c"), "MOMENTS_WEIGHTS_SHA256": "0" * 64}
    done = subprocess.run([str(Path(sys.executable).parent / "consumer"), "fetch-model"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "expected SHA-256" in done.stderr and "fix:" in done.stderr
    assert not (tmp_path / "c" / "SHA256SUMS").exists()


def test_packaged_category_lists_are_the_published_ones(shared_data: Path) -> None:
    """Shipped so that an offline trial needs only `consumer make-test-checkpoint`."""
    from moments_stream.settings import MODEL_RELEASES, packaged_categories

    for release, count in (("v1", 339), ("v2", 305)):
        packaged = packaged_categories(MODEL_RELEASES[release])
        assert packaged.read_bytes() == (shared_data / packaged.name).read_bytes()
        assert len(packaged.read_text().splitlines()) == count == MODEL_RELEASES[release].num_classes
        assert Settings.from_env({"MOMENTS_MODEL": release}).categories_source == str(packaged)
