"""``tandem demo``: the whole product on the bundled sample corpus, from a bare cache.

Pulls the offline teacher and student, exports both to ONNX, aligns the
student to the teacher (ridge adapter), builds an index bundle of the sample
corpus with a student view, starts the server in the mode the label-free
fused weight favours (fused unless ``w`` = 1) and prints a ready-to-paste curl for
/search and the URL of the search console.
Everything it derives is cached, so a second run starts serving in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
REPO = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = REPO / "samples" / "corpus.jsonl"
DEMO_VARIANTS = ["f32-768", "f32-256", "int8-768", "bin-768", "bin-768-hnsw", "f32-256-hnsw"]
DEMO_STUDENT = "demo-student"
DEMO_PSEUDO_QUERIES = 800


def demo(
    corpus: Annotated[Path, typer.Option(help="Corpus to index (JSONL, CSV, Parquet, BEIR).")] = (
        SAMPLE_CORPUS
    ),
    bundle: Annotated[Path, typer.Option(help="Bundle root to build or reuse.")] = Path(
        "bundles/samples"
    ),
    teacher: Annotated[str, typer.Option(help="Teacher spec.")] = "all-mpnet-base-v2",
    student: Annotated[str, typer.Option(help="Student spec.")] = "all-MiniLM-L6-v2",
    host: Annotated[str, typer.Option(help="Interface to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the server.")] = True,
) -> None:
    """Pull, export, align, index the sample corpus, serve; print a curl and the console URL."""
    from tandem.bundle.format import STUDENT_VIEW, BundleError, open_bundle
    from tandem.data.corpus import read_corpus
    from tandem.indexer.build import build_bundle
    from tandem.indexer.views import student_side
    from tandem.models.encoder import Encoder
    from tandem.toolchain.alignment_job import gather_texts, run_alignment
    from tandem.toolchain.export import export_artifact

    started = time.perf_counter()
    with console.status("1/4 pulling and exporting the teacher and the student (cached)"):
        teacher_dir, student_dir = export_artifact(teacher), export_artifact(student)
    console.print(f"[green]1/4[/green] ONNX teacher {teacher_dir.name}, student {student_dir.name}")

    with console.status("2/4 aligning the student to the teacher (ridge adapter, cached)"):
        texts = gather_texts(corpus, DEMO_PSEUDO_QUERIES)
        aligned = run_alignment(student_dir, teacher_dir, texts, "adapter", DEMO_STUDENT)
    console.print(f"[green]2/4[/green] aligned student {DEMO_STUDENT} -> {aligned.resolve()}")

    teacher_encoder = Encoder(teacher_dir)
    side = student_side(DEMO_STUDENT, aligned)
    docs = list(read_corpus(corpus))
    try:
        existing = open_bundle(bundle)
        view = existing.manifest.views.get(STUDENT_VIEW)
        reusable = (
            existing.manifest.teacher_fingerprint == teacher_encoder.card.fingerprint
            and existing.n_docs == len(docs)
            and set(DEMO_VARIANTS) <= set(existing.variant_names())
            and view is not None
            and view.fingerprint == side.encoder.card.fingerprint
            and view.fused_weight == side.fused_weight
        )
        existing.close()
    except BundleError:
        reusable = False
    if not reusable:
        with console.status(f"3/4 indexing {len(docs)} documents with the teacher and student"):
            build_bundle(docs, bundle, teacher_encoder, DEMO_VARIANTS, student=side)
    # w = 1 means fused scoring is asymmetric search: serve the plain mode then.
    mode = "fused" if side.fused_weight < 1.0 else "asymmetric"
    console.print(
        f"[green]3/4[/green] bundle {bundle} ({len(docs)} docs, {', '.join(DEMO_VARIANTS)}; "
        f"student view, label-free fused weight w={side.fused_weight:g} -> mode {mode})"
    )
    console.print(f"ready in {time.perf_counter() - started:.0f}s")
    if serve:
        _serve(bundle, host, port, mode)


def _serve(bundle: Path, host: str, port: int, mode: str = "asymmetric") -> None:
    command = [
        sys.executable, "-m", "tandem", "serve",
        "--bundle", str(bundle), "--student", DEMO_STUDENT,
        "--host", host, "--port", str(port), "--mode", mode,
    ]  # fmt: skip
    console.print(f"[green]4/4[/green] starting: {' '.join(command[2:])}")
    server = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://{host}:{port}"
    try:
        if not _wait_ready(f"{base}/readyz", server):
            raise typer.Exit(code=1)
        body = json.dumps({"query": "how do vaccines train the immune system", "k": 3})
        console.print("\n[bold]tandem is serving.[/bold] Try:\n")
        console.print(
            f"curl -s {base}/search -H 'Content-Type: application/json' -d '{body}'",
            soft_wrap=True,
            highlight=False,
        )
        console.print(f"\nor open the search console: [bold]{base}/[/bold]", highlight=False)
        console.print(f"metrics: {base}/metrics   info: {base}/info   Ctrl-C stops the server.")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 300) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            console.print(f"[red]the server exited with code {server.returncode}[/red]")
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    console.print(f"[red]the server was not ready after {timeout_s:.0f}s[/red]")
    return False
