"""Text-to-image on captions of people never seen in training (the synthetic world's
held-out split): train the t2i task alone with the named losses, print mAP / rank-1 of
the 32 held-out caption queries against their 32 images (plugin README, "Text-to-image
on held-out captions"). Needs the plugin instruct-editor.

    OMP_NUM_THREADS=1 CORE_LOAD_PLUGINS=instruct-editor python bench/t2i_heldout.py SEED EPOCHS MODE [PEOPLE]

MODE: "untrained" (EPOCHS 0), or names joined by "_": id (identification), at
(adaptive triplet, weight 3), itc (L_cl without momentum), itcm (L_cl with the momentum
model 0.995 and distillation 0.4), itm (t2i_matching: p-ITM + MLM with momentum
distillation + m-RTD, one fusion layer; also prints the numbers with ITM re-ranking of
the top RERANK_K = 10, `rr_mAP`, `rr_R1`).
The README's rows: id_at, id_at_itc, id_at_itcm, id_at_itcm_itm; PEOPLE 512, EPOCHS 6.
"""
import sys, time
import numpy as np, torch
from core.context import BuildContext
from core.data.loading import ImageSamples, collate
from core.data.table import RecordTable
from core.data.transforms import build_transform
from core.interfaces import FeatureSet
from core.pipeline import ReIDModel
from reid_instruct_editor.adaptive_triplet import AdaptiveTripletLoss
from reid_instruct_editor.backbone import InstructEditor
from reid_instruct_editor.dataset import InstructDataset
from reid_instruct_editor.evaluator import InstructReIDEvaluator
from reid_instruct_editor.head import InstructHead
from reid_instruct_editor.identity_loss import InstructIdentityLoss
from reid_instruct_editor.sampler import TaskPKSampler
from reid_instruct_editor.t2i_contrastive import T2IContrastiveLoss
torch.set_num_threads(1)
seed=int(sys.argv[1]); epochs=int(sys.argv[2]); mode=sys.argv[3]; ntrain=int(sys.argv[4]) if len(sys.argv)>4 else 32
WORLD = {"seed": seed, "identities": ntrain, "test_identities": 16, "cameras": 2, "render_size": [32, 16], "clothes_changes": 0,
         "infrared_cameras": [], "images_per_identity": 4}
VIT={"arch": "vit_tiny_patch16_224","model_kwargs": {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}}
CLIP={"embed_dim": 32,"vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
      "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
torch.manual_seed(seed)
data = InstructDataset(world=WORLD, tasks=["text-to-image"])
table = RecordTable.build([("instruct", data.records("train"))], relabel=True)
ctx = BuildContext.from_table(table, image_size=(32, 16))
backbone = InstructEditor(ctx, **VIT, clip_config=CLIP, freeze_text_encoder=False, freeze_image_encoder=False)
ctx.feature_dim = backbone.feature_dim
head = InstructHead(ctx)
model = ReIDModel(backbone, head)
losses = []
if "id" in mode: losses += [(1.0, InstructIdentityLoss())]
if "at" in mode: losses += [(3.0, AdaptiveTripletLoss())]
itc = T2IContrastiveLoss(ctx, queue_size=512, momentum=0.995 if "itcm" in mode else None)
itc.bind(model)
if "itc" in mode: losses += [(1.0, itc)]
if "itm" in mode:
    from reid_instruct_editor.t2i_matching import T2IMatchingLoss
    itm = T2IMatchingLoss(ctx, layers=1, heads=2); itm.bind(model); losses += [(1.0, itm)]
params = [p for p in model.parameters() if p.requires_grad] + [itc.temp] + ([p for p in itm.parameters()] if 'itm' in mode else [])
opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
samples = ImageSamples(table, [data], build_transform(train=True, size=[32, 16], pad=2))
sampler = TaskPKSampler(ctx, batch_size=32, k=4, seed=seed)
t0=time.time()
UNTRAINED=None
model.train(); itc.train()
[l.train() for _, l in losses]
for epoch in range(epochs):
    for step, indices in enumerate(sampler.plan(epoch)):
        batch = collate([samples[(i, epoch * 1000 + step)] for i in indices])
        batch.pids = torch.as_tensor(table.pids[np.asarray(indices)])
        out = model(batch)
        loss = sum(w * term(out, batch)[0] for w, term in losses)
        opt.zero_grad(); loss.backward(); opt.step()
model.eval()
def embed(records):
    t = RecordTable.build([("instruct", records)], relabel=False)
    s = ImageSamples(t, [data], build_transform(train=False, size=[32, 16]))
    rows, ref, tok = [], [], []
    with torch.no_grad():
        for a in range(0, len(t), 64):
            b = collate([s[i] for i in range(a, min(a + 64, len(t)))])
            o = model(b); rows.append(o["embedding"]); ref.append(o["reference_instruction_embedding"])
            tok.append(o["image_tokens"])
    return FeatureSet(embeddings=torch.cat(rows), pids=t.pids.copy(), camids=t.camids.copy(),
                      extras={"reference_instruction_embedding": torch.cat(ref), "image_tokens": torch.cat(tok)},
                      records=list(t.records))
q, g = embed(data.records("query")), embed(data.records("gallery"))
m = InstructReIDEvaluator(setting="task-specific", ranks=[1]).evaluate(q, g)
n_ids = len(set(g.pids.tolist()))
rr = ""
if "itm" in mode:
    RERANK_K = 10
    ev = InstructReIDEvaluator(setting="task-specific", ranks=[1], itm_rerank=RERANK_K)
    ev.bind(model, itm)
    r = ev.evaluate(q, g)
    rr = f" rr_k={RERANK_K} rr_mAP={r['mAP']:.1f} rr_R1={r['rank-1']:.1f}"
print(f"seed={seed} mode={mode} epochs={epochs} q={len(q)} g={len(g)} ids={n_ids} mAP={m['mAP']:.1f} R1={m['rank-1']:.1f}{rr} time={time.time()-t0:.0f}s", flush=True)
