import numpy as np, pandas as pd, tfmmrec, tensorflow as tf, time
from tfmmrec.export.loader import ExportedModel
from tfmmrec.serving.client import ServingClient
from tfmmrec.pipeline import restore
from tfmmrec.evaluation.crossmodal import embed_queries
from tfmmrec.evaluation.embeddings import single_modality_embeddings
model, ws = restore("/tmp/review_qbc/runfac")
items = pd.read_csv("data/fac/items.csv", keep_default_na=False)
single = single_modality_embeddings(model, ws.dataset.num_items)
from tfmmrec.modalities.text import join_text, TEXT_SEPARATOR
fac = list(join_text(items, ("genre","mood")))
print("facet strings e.g.", fac[:3])
em = ExportedModel("/tmp/review_qbc/modelsfac/fac-bruteforce/1")
q_ex = em._loaded.towers.facets_query(tf.constant(fac)).numpy()
q_py = embed_queries(model, ws, "facets", fac)
print("facets query: export vs in-process", np.abs(q_ex[:, :q_py.shape[1]] - q_py).max(), "vs item's own single-modality", np.abs(q_py - single["facets"]).max())
time.sleep(20)
for name in ["fac", "fac-bruteforce"]:
    e = ExportedModel(f"/tmp/review_qbc/modelsfac/{name}/1")
    a = e.call("query_facets", facets=np.array(fac, dtype=object), k=np.int32(10))
    for c in (ServingClient("127.0.0.1:18600", name), ServingClient("127.0.0.1:18601", name, rest=True)):
        b = c.query("facets", fac, k=10)
        print(name, "rest" if c.rest else "grpc", (a["item_ids"] == b["item_ids"]).all(), np.abs(a["scores"]-b["scores"]).max())
