"""A 100k-document build streams its vectors: peak RSS stays far below holding them all.

Synthetic unit vectors (a hash of each text, no model) go through the real
write path: staged documents, checkpointed vector file, chunked variant
builds, publish. The build runs in a fresh interpreter whose peak resident
set (VmHWM) is read from /proc at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

N_DOCS = 100_000
DIM = 768
MIB = 1 << 20
# What holding every vector would cost: float32 working copy of the whole matrix.
ALL_VECTORS_F32 = N_DOCS * DIM * 4  # 293 MiB
# Stated bound on growth over the interpreter's footprint after imports: the
# largest index built here (int8-768, 73 MiB) plus chunk buffers and SQLite.
GROWTH_LIMIT = 200 * MIB

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})  # the repository root, so tests.support imports

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    from tests.support.index import HashEncoder
    from tandem.indexer.build import EmbedSettings, build_bundle
    from tandem.bundle.format import open_bundle
    from tandem.data.corpus import Doc

    baseline = status("VmRSS")
    docs = (Doc(f"doc{{i}}", f"synthetic document {{i}}", {{"shard": i % 10}}) for i in range({n}))
    path = build_bundle(
        docs, Path({root!r}), HashEncoder({dim}), ["int8-768", "bin-768", "f32-64"],
        settings=EmbedSettings(checkpoint_every=4096), use_cache=False,
    )
    peak = status("VmHWM")
    with open_bundle(path) as bundle:
        sizes = {{name: info.bytes for name, info in bundle.manifest.variants.items()}}
        print(json.dumps({{"baseline": baseline, "peak": peak, "n_docs": bundle.n_docs,
                          "sizes": sizes, "vectors": bundle.sizes()["vectors"]}}))
    """
)


@pytest.mark.slow
def test_100k_synthetic_build_stays_under_the_stated_rss(tmp_path: Path) -> None:
    script = SCRIPT.format(
        tests=str(Path(__file__).resolve().parents[2]),
        n=N_DOCS,
        dim=DIM,
        root=str(tmp_path / "root"),
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["n_docs"] == N_DOCS
    assert report["vectors"] >= N_DOCS * DIM * 2  # f16 on disk
    # indexes hold exactly their codes: 1 byte/dim int8, 1 bit/dim binary, 4 bytes/dim f32
    for name, per_doc in (("int8-768", DIM), ("bin-768", DIM // 8), ("f32-64", 64 * 4)):
        assert N_DOCS * per_doc <= report["sizes"][name] < N_DOCS * per_doc + 64 * 1024, name
    growth = report["peak"] - report["baseline"]
    print(
        f"baseline {report['baseline'] / MIB:.0f} MiB, peak {report['peak'] / MIB:.0f} MiB, "
        f"growth {growth / MIB:.0f} MiB; indexes "
        + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in report["sizes"].items())
    )
    assert growth < GROWTH_LIMIT
    assert growth < ALL_VECTORS_F32
