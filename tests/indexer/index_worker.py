"""Run by test_resume.py as a real process: index a folder slowly, printing after each batch."""

import sys

from indexer.ingest import IngestOptions
from indexer.pipeline import Indexer
from indexer.sources import list_source
from tests.fakes import FakeEngine
from tests.stores import edge_store

if __name__ == "__main__":
    source, qdrant_path, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = edge_store(qdrant_path)
    emb = FakeEngine(delay_s=delay)
    real_embed = emb.embed

    def embed_and_say(batch):
        out = real_embed(batch)
        print("batch", flush=True)
        return out

    emb.embed = embed_and_say
    report = Indexer(client, emb, "photos", IngestOptions(batch=4, workers=2)).run(
        list_source(source, "dirs"), progress=False
    )
    client.close()
    print(f"done indexed={report.indexed} unchanged={report.unchanged}", flush=True)
