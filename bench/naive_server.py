"""The peer: search as users write it in 20 lines (FastAPI + sentence-transformers + FAISS).

Deliberately naive, not a straw man: the model is loaded once, document
vectors are precomputed by the same model, the index is an exact flat inner
product, and the route is a plain ``def`` (FastAPI runs it in its thread
pool). No micro-batching, no ONNX, no admission control. Configured by
environment variables because that is what such a script does.

    NAIVE_MODEL=DIR NAIVE_DOCS=docs.jsonl NAIVE_VECTORS=vectors.npy \
        uvicorn bench.naive_server:app --host 127.0.0.1 --port 8000
"""

import json
import os

import faiss
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(os.environ["NAIVE_MODEL"], device="cpu")
docs = [json.loads(line) for line in open(os.environ["NAIVE_DOCS"])]
index = faiss.IndexFlatIP(model.get_sentence_embedding_dimension())
index.add(np.load(os.environ["NAIVE_VECTORS"]).astype(np.float32))
app = FastAPI()


class Query(BaseModel):
    query: str
    k: int = 10


@app.post("/search")
def search(q: Query) -> dict:
    vector = model.encode([q.query], normalize_embeddings=True)
    scores, ids = index.search(vector, q.k)
    hits = [
        {"id": docs[i]["id"], "score": float(s), "text": docs[i]["text"]}
        for s, i in zip(scores[0], ids[0], strict=True)
        if i >= 0
    ]
    return {"results": hits}
