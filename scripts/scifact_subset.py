"""Write the SciFact subset used by docs/eval/scifact-subset: a BEIR folder of 1,974 documents.

Documents: every document judged in the test split, plus the 1,792 shortest
documents of the corpus (by characters of title + text, ties by corpus order:
the first seven 256-document checkpoint chunks of a full build). Queries: all;
test judgments: all; train judgments: those whose document is in the subset.

    python scripts/scifact_subset.py ../shared/data/scifact /tmp/scifact-subset
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tandem.data.beir import load_eval_set
from tandem.data.corpus import read_corpus

N_SHORTEST = 1792


def main(source: Path, dest: Path) -> None:
    docs = list(read_corpus(source, skip_bad=True))
    order = sorted(range(len(docs)), key=lambda i: (len(docs[i].text), i))
    keep = {docs[i].id for i in order[:N_SHORTEST]}
    keep |= {d for judged in load_eval_set(source, "test").qrels.values() for d in judged}
    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    with open(source / "corpus.jsonl") as src, open(dest / "corpus.jsonl", "w") as out:
        for line in src:
            if line.strip() and str(json.loads(line)["_id"]) in keep:
                out.write(line)
    shutil.copy(source / "queries.jsonl", dest / "queries.jsonl")
    shutil.copy(source / "qrels" / "test.tsv", dest / "qrels" / "test.tsv")
    with (
        open(source / "qrels" / "train.tsv") as src,
        open(dest / "qrels" / "train.tsv", "w") as out,
    ):
        for n, line in enumerate(src):
            if n == 0 or line.split("\t")[1] in keep:
                out.write(line)
    print(f"{len(keep)} documents written to {dest}")  # noqa: T201


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
