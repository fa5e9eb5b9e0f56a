"""Video library indexing: read -> embed -> write, FAISS index, and the Searcher.

    library.py   find videos (folder, list file, annotation file), keep paths inside the library, fingerprint files
    reader.py    hash, probe, cut into segments, decode frames (DataLoader worker processes)
    embedder.py  the mapper: the only code that runs the model (video batches, text queries)
    writer.py    checkpoint encoded files into a part: embedding shards + part.sqlite
    update.py    commit parts / removals as the next index version (FAISS file + one SQLite transaction)
    store.py     on-disk layout, SQLite schema, writer lock
    ann.py       FAISS: index-type rule, build, recall measurement and nprobe tuning
    ingest.py    build/add orchestration (ranks, resume, progress) and `info`
    searcher.py  Searcher: text -> ranked videos/segments, live reload, thread-safe
    media.py     segment thumbnails for the app

Public API: `ingest.build(videos, out, model_path=...)`, `ingest.add(index, videos)`, `update.remove(index, paths)`,
`update.merge(index)`, `ingest.info(index)`, `searcher.Searcher(index).search("a dog catches a frisbee", k=10)`.
This package never imports `pretrain/`.
"""
