"""Source of notebooks/10_compression.ipynb (percent format). Build: python scripts/nbsrc/build.py scripts/nbsrc/10_compression.py"""
# %% [markdown]
# # 第 10 章 模型蒸餾與剪枝 · Model distillation and pruning
#
# 壓縮(compression)是教學最容易誤導人的地方:只加了遮罩(mask)的「剪枝加速」、被類別數悄悄除掉的蒸餾損失、
# 從沒檢查過準確率的 int8 模型。本章每一步都**量**三件事 —— 大小、延遲(latency)、準確率 —— 並排比較,找出速度真正從哪裡來:
#
# 1. **知識蒸餾**(knowledge distillation):以第 3 章微調過的 all-MiniLM-L6-v2(SST-2 情感分類)為教師(teacher),
#    手寫蒸餾損失並 `assert` 它等於 `nn.KLDivLoss(reduction="batchmean")`;訓練 2 層、寬 128 的學生(student),
#    兩個種子(seed)比較 CE、KD 與「從教師初始化」;
# 2. **權重剪枝**(weight pruning)與**結構化剪枝**(structured pruning):在 MNIST CNN 上證明遮罩不會變小變快,
#    而把通道真正拿掉、重建小網路(`assert` 與遮罩版輸出相同)才會;
# 3. **部署**:剪枝 → int8 量化 → 匯出 ONNX → 在**不載入 PyTorch 的獨立行程**中以 ONNX Runtime 執行(`assert` 輸出與 PyTorch 相同);
# 4. **BERT 注意力頭剪枝**(head pruning):依 Michel 等人(2019)的重要性移除注意力頭,`assert` 剪掉的模型等於遮罩版。
#
# 教師是 `helpers.teacher` 的快取成品:第一次需要時訓練一次(固定種子、固定句子與步數),存進資料快取,第 5、10、12 章共用。
# 全部在 2 核 CPU 上約兩到三分鐘跑完;設定格註明 GPU 上該調高的數值。

# %%
import copy
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import helpers
from helpers.bert import Bert, BertClassifier, BertConfig
from helpers.compress import (
    check_amount,
    classifier_logits,
    count_heads,
    head_importance,
    heads_to_prune,
    kd_loss,
    kept_units,
    latency_ms,
    serialized_kb,
    shrink_pair,
    soft_targets,
)
from helpers.data import length_batches, load_mnist, load_sst2
from helpers.teacher import RECIPE, encode, evaluate, load_classifier, load_teacher, save_classifier

helpers.set_style()
warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.onnx's legacy exporter and torch.ao say so
warnings.filterwarnings("ignore", message=".*TracerWarning.*")
device = helpers.get_device()
torch.set_num_threads(max(1, torch.get_num_threads()))
print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
      f"native bf16: {helpers.bf16_fast(device)} (everything here runs in float32)")

# %% [markdown]
# **設定 · Configuration.** 為 2 核 CPU 設定(本章全用 float32,有沒有原生 bf16 都一樣)。學生只看 3,072 句轉移集(transfer set)、
# 訓練 2 個 epoch,每種設定兩個種子;MNIST 用 5,000 張訓練圖、全部 10,000 張測試圖。所有大小都在這格,
# 註解寫出 GPU 上可以調高的數值。

# %%
SEED = 0
MAX_LEN = 64
TRANSFER_N = 3072  # transfer-set sentences the teacher labels (unseen in its training); GPU: 60_000
STUDENT_HIDDEN, STUDENT_LAYERS, STUDENT_HEADS, STUDENT_FFN = 128, 2, 2, 512
STUDENT_BATCH, STUDENT_EPOCHS, STUDENT_LR = 64, 2, 1e-3  # GPU: STUDENT_EPOCHS = 3
KD_T, KD_ALPHA = 2.0, 0.5  # temperature; weight of the distillation term (1 − α goes to the hard labels)
KD_SEEDS = (0, 1)  # every student setting is trained once per seed; GPU: (0, 1, 2, 3, 4)
MNIST_EPOCHS, MNIST_BATCH, MNIST_LR = 3, 64, 1e-3  # GPU: MNIST_EPOCHS = 10
PRUNE_AMOUNTS = (0.5, 0.8, 0.9, 0.95)  # global unstructured magnitude pruning
CHANNEL_AMOUNT = 0.5  # structured: share of conv channels removed
FT_EPOCHS, FT_LR = 1, 5e-4  # short fine-tune after pruning
IMPORTANCE_N = 256  # SST-2 training sentences for head importance; GPU: 4_096
HEADS_REMOVED = (0, 36, 48)  # of the teacher's 6 × 12 = 72 heads
LAT_REPEAT = 10  # timing runs per latency figure (median)

# %% [markdown]
# **教師。** `load_teacher()` 從資料快取載入微調好的 MiniLM(平均池化分類頭,`helpers.bert.BertClassifier`);
# 快取裡沒有時,它依 `helpers.teacher.RECIPE` 先訓練一次(8,000 句 SST-2、依長度分桶、凍結詞嵌入、AdamW、
# 10 % 預熱後線性衰減,約一到兩分鐘)並以 safetensors 原子寫入(`make data` 會先做好)。重新評估一次,確認快取裡的就是當初那個模型:
# 驗證準確率 0.8544(872 句)。

# %%
teacher, tok = load_teacher()
print(f"teacher recipe: {teacher.info['recipe']}")
print(f"built in {teacher.info['train_seconds']} s of training; stored validation accuracy {teacher.info['val_acc']:.4f}")
sst = load_sst2()
val = sst["validation"]
Xva, yva = encode(tok, val["sentence"], MAX_LEN), torch.tensor(val["label"])
val_batches = length_batches(Xva, yva, 128)
t0 = time.perf_counter()
with torch.inference_mode():
    teacher_val_logits = [teacher(ids, am) for ids, am, _ in val_batches]  # kept: ONNX is compared against them
teacher_acc = sum((lg.argmax(-1) == y).sum().item() for lg, (_, _, y) in zip(teacher_val_logits, val_batches)) / len(yva)
teacher_eval_s = time.perf_counter() - t0
print(f"teacher: SST-2 validation accuracy {teacher_acc:.4f} on {len(Xva)} sentences ({teacher_eval_s:.1f} s)")
assert abs(teacher_acc - teacher.info["val_acc"]) < 0.005  # the cached teacher is the one that was built
assert teacher_acc > 0.8

# %% [markdown]
# ## 10.1 知識蒸餾:教師-學生模型 · Knowledge distillation: teacher and student
#
# Hinton 等人(2015)的想法:大模型(教師)的輸出分佈不只說「對的是哪一類」,還說「錯的類別有多像」——
# 這些**暗知識**(dark knowledge)藏在非最大的機率裡。讓小模型(學生)去擬合教師的**軟目標**(soft targets),
# 比只擬合 0/1 標籤得到更多資訊。
#
# ### 10.1.1 知識蒸餾核心過程 · The core distillation process
#
# 核心過程:教師對每個輸入算出 logits $z$,以溫度(temperature)$T$ 軟化成 $\mathrm{softmax}(z/T)$;
# 學生的 logits 也除以同一個 $T$,再最小化兩個分佈的 KL 散度(KL divergence)。下面是教師在四個驗證句子上的真實輸出:
# $T=1$ 時幾乎是 0/1,$T$ 越大越接近 0.5,句子之間「有多確定」的差別才顯露出來(第 4 句 'people cinema at its finest .'
# 在 $T=1$ 時只有 0.844,是教師最沒把握的一句)。

# %%
show = [0, 3, 11, 24]  # a few validation sentences
with torch.no_grad():
    ids, am, _ = length_batches([Xva[i] for i in show], yva[show], len(show))[0]
    t_logits = teacher(ids, am)
for i, lg in zip(show, t_logits):
    print(f"[{'pos' if yva[i] else 'neg'}] {val['sentence'][i][:60]!r:64} logits {lg.numpy().round(2)}")
temps = (1, 2, 4, 8)
probs = {T: soft_targets(t_logits, T)[:, 1] for T in temps}
for T in temps:
    print(f"T = {T}: P(positive) = {np.round(probs[T].numpy(), 3)}")
fig, ax = plt.subplots(figsize=(6, 2.8))
for j, i in enumerate(show):
    ax.plot(temps, [probs[T][j].item() for T in temps], marker="o", label=f"句子 {i}")
ax.axhline(0.5, color="grey", lw=0.8, ls="--")
ax.set(xscale="log", xticks=temps, xticklabels=temps, xlabel="溫度 T", ylabel="P(正面)",
       title="教師的軟目標:溫度越高越接近 0.5")
ax.legend(fontsize=8)
plt.show()
assert all((probs[8] - 0.5).abs().le((probs[1] - 0.5).abs()).tolist())  # softer with T

# %% [markdown]
# ### 10.1.2 教師-學生模型 · Teacher and student models
#
# 學生是同一個 `helpers.bert` 的小 BERT:2 層、隱藏寬 128、2 個頭、FFN 512,加平均池化分類頭。
# 學生只需要看得到轉移集裡出現過的詞:把詞表縮成這 5,883 個 token(其餘對應到 [UNK],驗證集有 8.9 % 的 token 因此變成 [UNK]),
# 嵌入層從 3.9 M 降到 0.77 M 參數。**從教師初始化**:把教師的詞與位置嵌入用 PCA(主成分分析)投影到 128 維
# (保留 65.9 % 的變異)當學生的初始嵌入。參數比:學生 1,183,234 對教師 22,713,986,**0.052×**;
# 若保留完整詞表則是 4,337,026(0.191×),不計嵌入則是 0.038×。

# %%
class SmallVocab(nn.Module):
    """A classifier that reads only a sub-vocabulary: token ids are mapped to it, all others to [UNK]."""

    def __init__(self, clf, remap):
        super().__init__()
        self.clf = clf
        self.register_buffer("remap", remap)

    def forward(self, ids, attention_mask):
        return self.clf(self.remap[ids], attention_mask)


def new_student(seed, init="random"):
    """A small BERT + mean-pool head over the transfer set's vocabulary; init='pca' copies the teacher's
    word/position embeddings, PCA-projected to the student's width."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=STUDENT_HIDDEN, num_layers=STUDENT_LAYERS,
                     num_heads=STUDENT_HEADS, intermediate_size=STUDENT_FFN, max_positions=128)
    student = BertClassifier(Bert(cfg), num_labels=2, pooling="mean")
    if init == "pca":
        with torch.no_grad():
            student.bert.embeddings.word.weight.copy_((word_emb[vocab] - word_mean) @ pca_basis)
            pos = teacher.bert.embeddings.position.weight[:cfg.max_positions]
            student.bert.embeddings.position.weight.copy_((pos - word_mean) @ pca_basis)
    return SmallVocab(student, remap)


train_pool = sst["train"].shuffle(seed=RECIPE.seed)  # the teacher learned from the first RECIPE.n_train of these
transfer = train_pool.select(range(RECIPE.n_train, RECIPE.n_train + TRANSFER_N))
Xtr, ytr = encode(tok, transfer["sentence"], MAX_LEN), torch.tensor(transfer["label"])
vocab = sorted(set(tok.all_special_ids) | {i for x in Xtr for i in x})  # the student's vocabulary
remap = torch.full((tok.vocab_size,), vocab.index(tok.unk_token_id), dtype=torch.long)
remap[vocab] = torch.arange(len(vocab))
unk_val = sum((remap[torch.tensor(x)] == remap[tok.unk_token_id]).sum().item() for x in Xva) / sum(map(len, Xva))
print(f"student vocabulary: the {len(vocab):,} token ids of the {TRANSFER_N:,} transfer sentences (of "
      f"{tok.vocab_size:,}); {unk_val:.1%} of the validation tokens become [UNK]")

with torch.no_grad():
    word_emb = teacher.bert.embeddings.word.weight
    word_mean = word_emb.mean(0)
    _, _, v = torch.linalg.svd(word_emb - word_mean, full_matrices=False)
    pca_basis = v[:STUDENT_HIDDEN].T  # (384, 128): the directions of largest variance
    kept_var = (((word_emb - word_mean) @ pca_basis).var(0).sum() / (word_emb - word_mean).var(0).sum()).item()
print(f"PCA: 128 of 384 dimensions keep {kept_var:.1%} of the word embeddings' variance")

n_teacher = helpers.count_parameters(teacher)
n_student = helpers.count_parameters(new_student(SEED))
emb_t = sum(p.numel() for n, p in teacher.named_parameters() if "embeddings" in n)
emb_s = sum(p.numel() for n, p in new_student(SEED).named_parameters() if "embeddings" in n)
param_ratio = n_student / n_teacher
full_vocab = n_student + (tok.vocab_size - len(vocab)) * STUDENT_HIDDEN
print(f"teacher {n_teacher:,} parameters ({emb_t:,} in the embeddings); student {n_student:,} ({emb_s:,}); "
      f"with the full vocabulary the student would have {full_vocab:,} ({full_vocab / n_teacher:.3f}×)")
print(f"student/teacher: {param_ratio:.3f} of the parameters, {(n_student - emb_s) / (n_teacher - emb_t):.3f} "
      f"without the embeddings")

# %% [markdown]
# ### 10.1.3 蒸餾損失 · The distillation loss
#
# 蒸餾損失(Hinton 等人):
#
# $$\mathcal{L} = \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T)\big) + (1-\alpha)\,\mathrm{CE}(s, y)$$
#
# KL 對類別**求和**、對批次**平均**。下面手寫一次,`assert` 它等於 `nn.KLDivLoss(reduction="batchmean")` 作用在
# log 機率上,也等於 `helpers.compress.kd_loss`。**陷阱**:`reduction="mean"` 是對「批次 × 類別」所有元素平均,
# 等於又除以類別數 —— 兩類時蒸餾項悄悄小了一半(比值 2.000,已斷言),十類時小十倍。

# %%
def my_kd_loss(s, t, y, T, alpha):
    p_t = F.softmax(t / T, dim=-1)
    kl = (p_t * (F.log_softmax(t / T, dim=-1) - F.log_softmax(s / T, dim=-1))).sum(-1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)


torch.manual_seed(SEED)
ids, am, y = val_batches[3]
with torch.no_grad():
    t_lg = teacher(ids, am)
    s_lg = new_student(SEED).eval()(ids, am)
mine = my_kd_loss(s_lg, t_lg, y, KD_T, KD_ALPHA)
kl_batchmean = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_lg / KD_T, -1), F.softmax(t_lg / KD_T, -1))
reference = KD_ALPHA * KD_T ** 2 * kl_batchmean + (1 - KD_ALPHA) * F.cross_entropy(s_lg, y)
torch.testing.assert_close(mine, reference)
torch.testing.assert_close(kd_loss(s_lg, t_lg, y, KD_T, KD_ALPHA), reference)
print(f"KD loss by hand {mine:.6f} == nn.KLDivLoss(batchmean) {reference:.6f} == helpers.compress.kd_loss")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # PyTorch itself warns that 'mean' is not the KL divergence
    kl_mean = nn.KLDivLoss(reduction="mean")(F.log_softmax(s_lg / KD_T, -1), F.softmax(t_lg / KD_T, -1))
print(f"KL batchmean {kl_batchmean:.6f}, KL 'mean' {kl_mean:.6f}: ratio {kl_batchmean / kl_mean:.3f} "
      f"= the number of classes ({s_lg.shape[1]})")
torch.testing.assert_close(kl_batchmean / kl_mean, torch.tensor(float(s_lg.shape[1])))

# %% [markdown]
# **為什麼乘 $T^2$?** 軟目標項對學生 logits 的梯度是 $\frac{1}{T}(\mathrm{softmax}(s/T)-\mathrm{softmax}(t/T))$,
# 而括號內的差在 $T$ 大時本身也約與 $1/T$ 成正比,所以整個梯度像 $1/T^2$ 一樣縮小。乘上 $T^2$ 之後,
# 不論選哪個溫度,軟目標項與硬標籤項的梯度都在同一個量級。下面以數值驗證:$T$ 從 16 到 32,單純 KL 的梯度縮小 3.98 倍,
# 乘 $T^2$ 後幾乎不變(0.994 倍)。

# %%
grad_rows = []
for T in (1, 2, 4, 8, 16, 32):
    s = s_lg.clone().requires_grad_(True)
    kd_only = kd_loss(s, t_lg, temperature=T, alpha=1.0) / T ** 2  # the bare KL(T)
    (g,) = torch.autograd.grad(kd_only, s)
    grad_rows.append((T, g.norm().item(), g.norm().item() * T ** 2))
    print(f"T = {T:2d}: |∂KL/∂s| = {grad_rows[-1][1]:.2e}   T²·|∂KL/∂s| = {grad_rows[-1][2]:.2e}")
(_, g16, g16s), (_, g32, g32s) = grad_rows[-2:]
print(f"T 16 → 32: the bare KL gradient shrinks {g16 / g32:.2f}×, the T²-scaled one changes {g16s / g32s:.3f}×")
assert 3.6 < g16 / g32 < 4.4 and 0.9 < g16s / g32s < 1.1  # gradient ∝ 1/T² at high T; T² undoes it
s = s_lg.clone().requires_grad_(True)
(g_ce,) = torch.autograd.grad(F.cross_entropy(s, y), s)
print(f"for scale: the hard-label CE gradient is {g_ce.norm():.2e}")

# %% [markdown]
# ## 10.2 知識蒸餾在文字模型中的應用 · Distillation for text models
#
# ### 10.2.1 知識蒸餾在文字分類模型中的應用 · Distilling a text classifier
#
# **轉移集**:從 SST-2 訓練集取 3,072 句教師**沒看過**的句子(教師用的是同一打亂順序的前 8,000 句),
# 先讓教師算一次 logits(它在這些句子上與人工標籤一致 88.2 %),之後每個學生都重用。學生依長度分桶、AdamW、
# 10 % 預熱後線性衰減、2 個 epoch。先比最基本的兩種:只用標籤的交叉熵(CE),與 $T=2,\ \alpha=0.5$ 的 KD,各兩個種子。

# %%
# length-sorted batches once for the teacher; each sentence's logits are then looked up by index
order = sorted(range(len(Xtr)), key=lambda i: len(Xtr[i]))
t_logits_tr = torch.empty(len(Xtr), 2)
t0 = time.perf_counter()
with torch.no_grad():
    for k in range(0, len(order), 128):
        idx = order[k:k + 128]
        ids, am, _ = length_batches([Xtr[i] for i in idx], ytr[idx], len(idx))[0]
        t_logits_tr[idx] = teacher(ids, am)
label_s = time.perf_counter() - t0
teacher_tr_acc = (t_logits_tr.argmax(-1) == ytr).float().mean().item()
print(f"transfer set: {len(Xtr):,} sentences, teacher logits in {label_s:.1f} s; the teacher agrees with the "
      f"human labels on {teacher_tr_acc:.1%}")


def student_batches(seed):
    """Length-bucketed batches of (ids, mask, labels, teacher logits), a new batch order per epoch."""
    out = []
    for ep in range(STUDENT_EPOCHS):
        g = torch.Generator().manual_seed(seed * 1000 + ep)
        perm = torch.randperm(len(Xtr), generator=g).tolist()  # tie-break equal lengths differently per epoch
        idx = sorted(perm, key=lambda i: len(Xtr[i]))
        chunks = [idx[k:k + STUDENT_BATCH] for k in range(0, len(idx), STUDENT_BATCH)]
        for c in (chunks[j] for j in torch.randperm(len(chunks), generator=g).tolist()):
            ids, am, yy = length_batches([Xtr[i] for i in c], ytr[c], len(c))[0]
            out.append((ids, am, yy, t_logits_tr[c]))
    return out


def train_student(seed, init="random", T=KD_T, alpha=KD_ALPHA):
    """alpha=0 is plain cross-entropy on the labels; otherwise kd_loss with the teacher's logits."""
    student = new_student(seed, init)
    batches = student_batches(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=STUDENT_LR, weight_decay=0.01)
    warm = len(batches) // 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else (len(batches) - s) / (len(batches) - warm))
    torch.manual_seed(seed)
    student.train()
    t0 = time.perf_counter()
    for ids, am, yy, tl in batches:
        logits = student(ids, am)
        loss = F.cross_entropy(logits, yy) if alpha == 0 else kd_loss(logits, tl, yy, T, alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    return student, evaluate(student, val_batches), seconds


runs = {}  # (setting name, seed) -> validation accuracy
students = {}
for seed in KD_SEEDS:
    for name, kw in (("CE", dict(alpha=0.0)), (f"KD T={KD_T:g} α={KD_ALPHA}", {})):
        students[name, seed], runs[name, seed], sec = train_student(seed, **kw)
        print(f"seed {seed}  {name:14s} validation accuracy {runs[name, seed]:.4f}  ({sec:.1f} s)")
ce = np.array([runs["CE", s] for s in KD_SEEDS])
kd = np.array([runs[f"KD T={KD_T:g} α={KD_ALPHA}", s] for s in KD_SEEDS])
print(f"CE {ce.mean():.4f} ± {ce.std(ddof=1):.4f}, KD {kd.mean():.4f} ± {kd.std(ddof=1):.4f} "
      f"(mean ± sd over {len(KD_SEEDS)} seeds); teacher {teacher_acc:.4f}")
assert kd.mean() > 0.7 and ce.mean() > 0.7  # both students learned the task

# %% [markdown]
# ### 10.2.2 模型蒸餾效率分析 · How efficient is distillation
#
# 效率:參數、檔案大小(`state_dict` 序列化後)、批次 1 與 32 的延遲(長度 64 的隨機 token),以及準確率,
# 都寫成學生/教師的比值。速度的數字每次執行略有不同,以上面印出的為準。

# %%
student = students[f"KD T={KD_T:g} α={KD_ALPHA}", KD_SEEDS[0]].eval()
gen = torch.Generator().manual_seed(SEED)
lat = {}
for b in (1, 32):
    ids = torch.randint(1000, 30000, (b, MAX_LEN), generator=gen)
    am = torch.ones_like(ids)
    with torch.inference_mode():
        lat["teacher", b] = latency_ms(lambda: teacher(ids, am), repeat=LAT_REPEAT if b == 1 else 5, warmup=1)
        lat["student", b] = latency_ms(lambda: student(ids, am), repeat=LAT_REPEAT)
kb_t, kb_s = serialized_kb(teacher.state_dict()), serialized_kb(student.state_dict())
eff = {"parameters": (n_teacher, n_student), "file (MB)": (kb_t / 1024, kb_s / 1024),
       "latency batch 1 (ms)": (lat["teacher", 1], lat["student", 1]),
       "latency batch 32 (ms)": (lat["teacher", 32], lat["student", 32]),
       "SST-2 accuracy": (teacher_acc, kd.mean())}
print(f"{'':24s}{'teacher':>12s}{'student':>12s}{'student/teacher':>17s}")
for k, (a, b) in eff.items():
    print(f"{k:24s}{a:12,.4g}{b:12,.4g}{b / a:17.3f}")
speed1, speed32 = lat["teacher", 1] / lat["student", 1], lat["teacher", 32] / lat["student", 32]
print(f"the student is {speed1:.1f}× faster at batch 1 and {speed32:.1f}× at batch 32 (sequence {MAX_LEN}), "
      f"{100 * (teacher_acc - kd.mean()):.1f} points less accurate")

# %% [markdown]
# ### 10.2.3 文字情感分析任務中的知識蒸餾效率對比 · Distillation on sentiment analysis: a comparison
#
# 比較表:兩個溫度($T=2$、$T=4$)、兩個 $\alpha$(0 即只用標籤的 CE、0.5),以及 PCA 初始化,每種設定兩個種子,
# 報告平均 ± 標準差。判準寫在程式裡:差距要超過兩個設定的合併標準差(pooled sd)的兩倍才算差異,否則就是「此規模下看不出差異」。

# %%
settings = {"KD T=4 α=0.5": dict(T=4.0, alpha=0.5),  # GPU: add "KD T=2 α=1.0": dict(T=2.0, alpha=1.0)
            "CE + PCA init": dict(alpha=0.0, init="pca")}
for seed in KD_SEEDS:
    for name, kw in settings.items():
        _, runs[name, seed], sec = train_student(seed, **kw)
names = ["CE", f"KD T={KD_T:g} α={KD_ALPHA}", *settings]
ce_sd = ce.std(ddof=1)
table = {}
print(f"{'student setting':28s}{'accuracy, mean ± sd':>22s}{'vs CE':>9s}   seeds: " + " ".join(map(str, KD_SEEDS)))
for name in names:
    a = np.array([runs[name, s] for s in KD_SEEDS])
    table[name] = (a.mean(), a.std(ddof=1))
    print(f"{name:28s}{a.mean():14.4f} ± {a.std(ddof=1):.4f}{100 * (a.mean() - ce.mean()):+8.1f} pt   "
          + " ".join(f"{x:.4f}" for x in a))
print(f"teacher {teacher_acc:.4f}; verdict: a gap counts only if it exceeds twice the pooled seed-to-seed sd")
verdicts = {}
for name in names[1:]:
    gap = table[name][0] - ce.mean()
    noise = np.sqrt((table[name][1] ** 2 + ce_sd ** 2) / 2)  # pooled sd of the two settings
    verdict = "better than CE" if gap > 2 * noise else "worse than CE" if gap < -2 * noise else \
        "no difference from CE at this scale (此規模下看不出差異)"
    verdicts[name] = verdict
    print(f"  {name:28s} {100 * gap:+.1f} pt (2 × pooled sd = {200 * noise:.1f} pt) → {verdict}")

# %% [markdown]
# **誠實的結論。** 在這個規模(3,072 句、2 個 epoch、兩個種子)下,KD 對學生**沒有可量出的幫助**:
# $T=2,\alpha=0.5$ 是 0.7167 ± 0.0227,CE 是 0.7282 ± 0.0211,$T=4$(0.7271 ± 0.0211)也在種子雜訊之內
# (種子之間相差 2–3 個百分點)。真正有用的是**從教師初始化**:PCA 嵌入讓 CE 學生到 0.7701 ± 0.0073,高出 4.2 個百分點,
# 超過雜訊門檻。所有學生都比教師(0.8544)低 8–14 個百分點。筆記裡在 20,000 句、3 個 epoch 的規模上量到 KD 多 1.3 點;
# GPU 讀者把 `TRANSFER_N`、`STUDENT_EPOCHS` 與 `KD_SEEDS` 調高,就能檢驗那個差距是否撐得過更多種子。

# %% [markdown]
# ## 10.3 模型剪枝技術 · Model pruning
#
# 剪枝(pruning)移除不重要的參數。**非結構化**剪枝把個別權重設為 0,矩陣形狀不變;**結構化**剪枝移除整個通道
# (channel)、神經元或注意力頭,矩陣真的變小。兩者對大小與速度的影響完全不同,下面分別量。
#
# ### 10.3.1 權重剪枝 · Weight pruning
#
# 先在 5,000 張 MNIST 上訓練一個小 CNN(兩層 3×3 卷積,不補零(no padding),各接 ReLU 與最大池化,再兩層全連接),
# 在全部 10,000 張測試圖上評估。接著用 `torch.nn.utils.prune.global_unstructured` 做**全域**量級剪枝(global magnitude pruning):
# 所有層的權重一起排序,剪掉絕對值最小的 50/80/90/95 %,再以遮罩固定、微調 1 個 epoch。公平的對照是**密集模型也多訓練同樣 1 個 epoch**。
# 全域剪枝自動把大部分的剪除量放在參數最多的 `fc1`(90 % 時 fc1 剪掉 93 %、conv1 只剪 8 %)。
# 剪掉 50 % 與 80 % 後不微調只掉 0.6 點左右;95 % 時掉到 0.7801,但 1 個 epoch 的微調就回到 0.9559。
# 與公平對照(密集模型多訓練 1 個 epoch:0.9668)相比,剪 50 % 再微調是 0.9672(幾乎一樣),90 % 是 0.9650(−0.2 點)。

# %%
def mnist_tensors(train):
    ds = load_mnist(train=train)
    return ((ds.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1), ds.targets.clone()


Xm, ym = mnist_tensors(True)
Xt, yt = mnist_tensors(False)


class DigitCNN(nn.Module):
    """conv 3×3 (no padding) → ReLU → max-pool, twice, then two Linear layers. Widths are arguments, so a pruned
    copy is the same class with smaller numbers."""

    def __init__(self, c1=16, c2=32, hidden=128):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, c1, 3), nn.Conv2d(c1, c2, 3)
        self.fc1, self.fc2 = nn.Linear(c2 * 5 * 5, hidden), nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 28 → 26 → 13
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 13 → 11 → 5
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def fit_mnist(model, epochs, lr, seed=SEED):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(Xm), generator=g).split(MNIST_BATCH):
            loss = F.cross_entropy(model(Xm[idx]), ym[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.inference_mode()
def mnist_acc(model):
    model.eval()
    return sum((model(x).argmax(-1) == y).sum().item() for x, y in zip(Xt.split(2000), yt.split(2000))) / len(yt)


torch.manual_seed(SEED)
t0 = time.perf_counter()
cnn = fit_mnist(DigitCNN(), MNIST_EPOCHS, MNIST_LR)
base_acc = mnist_acc(cnn)
print(f"DigitCNN: {helpers.count_parameters(cnn):,} parameters, trained {MNIST_EPOCHS} epochs on {len(Xm):,} digits "
      f"in {time.perf_counter() - t0:.1f} s; test accuracy {base_acc:.4f} on {len(Xt):,} digits")

# %%
def prunable(model):
    return [(m, "weight") for m in (model.conv1, model.conv2, model.fc1, model.fc2)]


cnn_ft = fit_mnist(copy.deepcopy(cnn), FT_EPOCHS, FT_LR)
dense_ft_acc = mnist_acc(cnn_ft)
print(f"fair reference: the dense CNN fine-tuned the same {FT_EPOCHS} extra epoch reaches {dense_ft_acc:.4f}")
rows = []
for amount in PRUNE_AMOUNTS:
    m = copy.deepcopy(cnn)
    prune.global_unstructured(prunable(m), pruning_method=prune.L1Unstructured, amount=check_amount(amount))
    acc0 = mnist_acc(m)
    per_layer = {n: (getattr(m, n).weight == 0).float().mean().item() for n in ("conv1", "conv2", "fc1", "fc2")}
    acc1 = mnist_acc(fit_mnist(m, FT_EPOCHS, FT_LR))
    rows.append((amount, acc0, acc1, per_layer))
    print(f"{amount:.0%} of the weights removed: accuracy {acc0:.4f} → {acc1:.4f} after {FT_EPOCHS} epoch of "
          f"fine-tuning; per layer " + ", ".join(f"{k} {v:.0%}" for k, v in per_layer.items()))
    if amount == 0.9:
        sparse90 = m
assert rows[0][1] > base_acc - 0.01  # half of the weights go almost for free

# %% [markdown]
# **遮罩不會讓模型變小,也不會變快。** `prune` 把權重換成 `weight_orig` 與 `weight_mask` 兩份,
# `forward` 時才相乘:檔案從 427 KB 變成 852 KB(**變大一倍**,已斷言),密集矩陣乘法照樣算那些 0,延遲沒有下降(見上面印出的時間;遮罩版還多一次相乘)。
# `prune.remove` 把遮罩烘進權重後檔案回到 427 KB;真正變小要用稀疏格式儲存:CSR(int32 索引)只要 91 KB。
# 稀疏矩陣乘法在 93 % 的零之下,實測加速也遠不到理論上少算的 14 倍(見印出的時間)—— 要在 CPU 上真的加速,需要結構化剪枝。

# %%
print("state_dict keys of a pruned layer:", [k for k in sparse90.state_dict() if k.startswith("fc1.")])
x1000 = Xt[:1000]


def best_ms(models, x, rounds=2):
    """Latency of each model on batch x: the best of `rounds` medians, measured in alternation (fairer on a busy CPU)."""
    out = [float("inf")] * len(models)
    for _ in range(rounds):
        for j, m in enumerate(models):
            out[j] = min(out[j], latency_ms(lambda: m(x), repeat=5, warmup=1))
    return out


kb_dense = serialized_kb(cnn.state_dict())
kb_masked = serialized_kb(sparse90.state_dict())
removed90 = copy.deepcopy(sparse90)
for mod, name in prunable(removed90):
    prune.remove(mod, name)  # weight = weight_orig * mask, made permanent; zeros stay zeros
kb_removed = serialized_kb(removed90.state_dict())
ms_dense, ms_masked, ms_removed = best_ms([cnn, sparse90, removed90], x1000)
sparse90 = removed90


def to_csr(w):  # compressed sparse rows with int32 indices: 4 bytes per value + 4 per column index
    c = w.flatten(1).to_sparse_csr()
    return torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(), c.shape)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
    sparse_sd = {k: (to_csr(v) if k.endswith("weight") else v) for k, v in sparse90.state_dict().items()}
    kb_csr = serialized_kb(sparse_sd)
print(f"90 % pruned, file: dense {kb_dense:.0f} KB, with masks {kb_masked:.0f} KB, after prune.remove "
      f"{kb_removed:.0f} KB, CSR sparse {kb_csr:.0f} KB")
print(f"1000-image latency: dense {ms_dense:.1f} ms, masked {ms_masked:.1f} ms, after remove {ms_removed:.1f} ms")
assert kb_masked > 1.5 * kb_dense  # weight_orig + weight_mask: the masked model is bigger, not smaller
assert kb_csr < 0.5 * kb_dense
dense_w = sparse90.fc1.weight.detach()
csr_w = to_csr(dense_w)
x_fc = torch.randn(dense_w.shape[1], 1000)
ms_mm_dense = latency_ms(lambda: dense_w @ x_fc, repeat=LAT_REPEAT)
ms_mm_csr = latency_ms(lambda: csr_w @ x_fc, repeat=LAT_REPEAT)
torch.testing.assert_close(csr_w @ x_fc, dense_w @ x_fc, rtol=1e-4, atol=1e-4)
print(f"fc1 ({(dense_w == 0).float().mean():.0%} zeros) times 1000 vectors: dense {ms_mm_dense:.2f} ms, "
      f"CSR sparse {ms_mm_csr:.2f} ms")

# %% [markdown]
# ### 10.3.2 結構化剪枝 · Structured pruning
#
# **結構化剪枝**:用 `prune.ln_structured(n=2, dim=0)` 依 L2 範數把 conv1 與 conv2 各一半的輸出通道遮掉,
# 遮罩版微調 1 個 epoch,然後**實際重建**一個更窄的 `DigitCNN`:`helpers.compress.shrink_pair` 刪掉這一層的輸出通道與下一層對應的輸入。
# 細節:被剪的通道權重為 0,但偏差(bias)還在,經過 ReLU 後輸出常數 $\mathrm{relu}(b)$,這個常數仍流進下一層。
# 把它乘上下一層對應的權重、加進下一層的偏差(**偏差折疊**, bias folding),重建的網路才與遮罩版**完全相同**(已斷言)。
# 不折疊的話 logits 最多差 0.52。(這也是卷積不補零的原因:補零時邊界的常數貢獻不同,無法折進偏差。)
# 結果:參數 108,618 → 53,866,準確率 0.9594(遮罩版與重建版相同;公平對照 0.9668,即 −0.7 點),
# 1000 張圖的延遲真的下降(倍數見上面印出的結果;這台共用 CPU 上的計時每次執行都有起伏,遮罩版則完全不會變快)。

# %%
masked = copy.deepcopy(cnn)
for layer in (masked.conv1, masked.conv2):
    prune.ln_structured(layer, "weight", amount=check_amount(CHANNEL_AMOUNT), n=2, dim=0)  # whole output channels
acc_masked0 = mnist_acc(masked)
acc_masked = mnist_acc(fit_mnist(masked, FT_EPOCHS, FT_LR))
for layer in (masked.conv1, masked.conv2):
    prune.remove(layer, "weight")
k1, k2 = kept_units(masked.conv1.weight), kept_units(masked.conv2.weight)
rebuilt = DigitCNN(len(k1), len(k2), masked.fc1.out_features)
rebuilt.conv1, conv2_tmp = shrink_pair(masked.conv1, masked.conv2, k1)
rebuilt.conv2, rebuilt.fc1 = shrink_pair(conv2_tmp, masked.fc1, k2)
rebuilt.fc2 = copy.deepcopy(masked.fc2)
rebuilt.eval()
with torch.inference_mode():
    torch.testing.assert_close(rebuilt(x1000), masked(x1000), rtol=1e-4, atol=1e-4)
    no_fold = copy.deepcopy(rebuilt)
    no_fold.fc1.bias.copy_(masked.fc1.bias)
    no_fold.conv2.bias.copy_(masked.conv2.bias[k2])
    fold_gap = (no_fold(x1000) - masked(x1000)).abs().max().item()
acc_rebuilt = mnist_acc(rebuilt)
print(f"conv channels kept: conv1 {len(k1)}/{cnn.conv1.out_channels}, conv2 {len(k2)}/{cnn.conv2.out_channels}")
print(f"rebuilt == masked network (max |Δlogit| ≤ 1e-4); without the bias folding they would differ by up to "
      f"{fold_gap:.2f}")
ms_dense2, ms_rebuilt = best_ms([cnn, rebuilt], x1000)
n_cnn, n_rebuilt = helpers.count_parameters(cnn), helpers.count_parameters(rebuilt)
print(f"accuracy: dense {base_acc:.4f} (+{FT_EPOCHS} epoch: {dense_ft_acc:.4f}), channels masked {acc_masked0:.4f}, after {FT_EPOCHS} epoch fine-tuning "
      f"{acc_masked:.4f}, rebuilt {acc_rebuilt:.4f}")
print(f"parameters {n_cnn:,} → {n_rebuilt:,} ({n_rebuilt / n_cnn:.2f}×); 1000-image latency {ms_dense2:.1f} → "
      f"{ms_rebuilt:.1f} ms ({ms_dense2 / ms_rebuilt:.1f}× faster)")
assert acc_rebuilt == acc_masked
assert ms_rebuilt < ms_dense2

# %% [markdown]
# ### 10.3.3 在嵌入式裝置上部署手寫數字辨識模型 · Deploying a handwritten-digit recognizer on an embedded device
#
# **部署到嵌入式裝置**:把剪枝重建後的 CNN 再做 int8 動態量化(dynamic quantization,`torch.ao.quantization.quantize_dynamic`,
# 全連接層的權重存成 int8),並匯出 ONNX(`torch.onnx.export(..., dynamo=False)`,opset 17)。ONNX Runtime 在
# **另一個 Python 行程**裡執行(`scripts/ort_infer.py`,只匯入 NumPy 與 onnxruntime,並回報 `torch` 不在 `sys.modules` 中,已斷言),
# 就像裝置上沒有 PyTorch;int8 版本由 `onnxruntime.quantization.quantize_dynamic` 產生。ONNX fp32 的輸出與 PyTorch 在 10,000 張圖上相差
# 不到 1e-4(已斷言)。表中的大小是 KB、延遲是批次 1 的每張毫秒數、準確率是全部 10,000 張測試圖:
# 剪枝加 int8 從 427 KB 降到 60 KB,準確率 0.9588。表的第一列是同樣多訓練 1 個 epoch 的密集模型,作為公平對照。

# %%
work = Path(tempfile.mkdtemp(prefix="ch10_"))
ORT = Path("..") / "scripts" / "ort_infer.py"  # run from notebooks/
if not ORT.exists():
    ORT = Path("scripts") / "ort_infer.py"
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cnn_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(rebuilt), {nn.Linear}, dtype=torch.qint8)


def export_onnx(model, args, path, names, dynamic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["logits"], dynamic_axes=dynamic)
    return path


def ort_run(onnx_path, feeds, quantize=None, repeat=LAT_REPEAT):
    """ONNX Runtime in a separate Python process that imports no torch (scripts/ort_infer.py)."""
    inp, out = work / "in.npz", work / "out.npz"
    np.savez(inp, **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items()})
    cmd = [sys.executable, str(ORT), str(onnx_path), str(inp), str(out), "--threads", str(torch.get_num_threads()),
           "--repeat", str(repeat)] + (["--quantize", str(quantize)] if quantize else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["torch_imported"] is False  # the "device" process ran without PyTorch
    with np.load(out) as o:
        return {k: torch.from_numpy(o[k]) for k in o.files}, info


onnx_cnn = export_onnx(rebuilt, (Xt[:1],), work / "digits.onnx", ["x"], {"x": {0: "batch"}, "logits": {0: "batch"}})
feeds = {"all__x": Xt, "time1__x": Xt[:1]}
t0 = time.perf_counter()
ort_fp32, info_fp32 = ort_run(onnx_cnn, feeds)
ort_int8, info_int8 = ort_run(onnx_cnn, feeds, quantize=work / "digits_int8.onnx")
ort_s = time.perf_counter() - t0
with torch.inference_mode():
    torch_logits = rebuilt(Xt)
    int8_logits = cnn_int8(Xt)
onnx_gap = (ort_fp32["all"] - torch_logits).abs().max().item()
torch.testing.assert_close(ort_fp32["all"], torch_logits, rtol=1e-4, atol=1e-4)  # ONNX Runtime == PyTorch
print(f"ONNX Runtime fp32 == PyTorch: max |Δlogit| = {onnx_gap:.1e} over {len(Xt):,} digits "
      f"(both ORT runs, in their own processes: {ort_s:.1f} s)")
print(f"int8 vs fp32 logits: PyTorch max |Δ| {(int8_logits - torch_logits).abs().max():.3f}, "
      f"ONNX Runtime max |Δ| {(ort_int8['all'] - torch_logits).abs().max():.3f}")


def acc_of(logits):
    return (logits.argmax(-1) == yt).float().mean().item()


x1 = Xt[:1]
deploy = {  # name: (KB, ms per image at batch 1, test accuracy)
    "fp32 (dense)": (serialized_kb(cnn_ft.state_dict()), latency_ms(lambda: cnn_ft(x1), repeat=50), dense_ft_acc),
    "pruned (rebuilt)": (serialized_kb(rebuilt.state_dict()), latency_ms(lambda: rebuilt(x1), repeat=50), acc_rebuilt),
    "pruned + int8 (PyTorch)": (serialized_kb(cnn_int8.state_dict()), latency_ms(lambda: cnn_int8(x1), repeat=50),
                                acc_of(int8_logits)),
    "pruned, ONNX fp32 (ORT)": (info_fp32["model_kb"], info_fp32["ms"]["time1"], acc_of(ort_fp32["all"])),
    "pruned, ONNX int8 (ORT)": (info_int8["model_kb"], info_int8["ms"]["time1"], acc_of(ort_int8["all"])),
}
print(f"{'model':26s}{'size KB':>9s}{'ms/image':>10s}{'accuracy':>10s}")
for name, (kb, ms, acc) in deploy.items():
    print(f"{name:26s}{kb:9.0f}{ms:10.3f}{acc:10.4f}")
assert deploy["pruned, ONNX int8 (ORT)"][0] < 0.5 * deploy["fp32 (dense)"][0]
assert deploy["pruned, ONNX int8 (ORT)"][2] > dense_ft_acc - 0.02

# %% [markdown]
# 同一條路用在 MiniLM 教師上:PyTorch 動態 int8、ONNX fp32 與 ONNX Runtime int8,都在全部 872 句驗證集上評估。
# int8 把檔案從 86.7 MB 降到 55.9 MB(詞嵌入仍是 fp32),準確率 0.8463(PyTorch,−0.8 點)與 0.8509(ONNX Runtime,−0.3 點)。
# 速度:本次執行 int8 在批次 32 上約快 2 倍,批次 1 只快 1.3–1.6 倍(表中印出的倍數);CPU 有沒有 int8 點積指令
# (x86 的 AVX-512 VNNI/AMX)差別很大 —— 量化的好處取決於硬體,一定要在目標機器上量。

# %%
class Logits(nn.Module):  # ONNX wants positional tensor inputs and one output
    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, input_ids, attention_mask):
        return self.clf(input_ids, attention_mask)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    teacher_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(teacher), {nn.Linear}, dtype=torch.qint8)
t0 = time.perf_counter()
teacher_int8_acc = evaluate(teacher_int8, val_batches)
int8_eval_s = time.perf_counter() - t0
ids32 = torch.randint(1000, 30000, (32, MAX_LEN), generator=torch.Generator().manual_seed(SEED))
am32 = torch.ones_like(ids32)
with torch.inference_mode():
    lat["teacher int8", 1] = latency_ms(lambda: teacher_int8(ids32[:1], am32[:1]), repeat=LAT_REPEAT)
    lat["teacher int8", 32] = latency_ms(lambda: teacher_int8(ids32, am32), repeat=3, warmup=1)
t0 = time.perf_counter()
onnx_bert = export_onnx(Logits(teacher).eval(), (ids32[:2], am32[:2]), work / "teacher.onnx",
                        ["input_ids", "attention_mask"],
                        {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                         "logits": {0: "batch"}})
export_s = time.perf_counter() - t0
bert_feeds = {f"b{i}__{n}": t for i, (ids, am, _) in enumerate(val_batches)
              for n, t in (("input_ids", ids), ("attention_mask", am))}
bert_feeds.update({"time1__input_ids": ids32[:1], "time1__attention_mask": am32[:1],
                   "time32__input_ids": ids32, "time32__attention_mask": am32})
ort_b32, info_b32 = ort_run(onnx_bert, bert_feeds, repeat=3)
ort_b8, info_b8 = ort_run(onnx_bert, bert_feeds, quantize=work / "teacher_int8.onnx", repeat=3)
bert_gap = max((ort_b32[f"b{i}"] - lg).abs().max().item() for i, lg in enumerate(teacher_val_logits))
print(f"MiniLM exported in {export_s:.1f} s; ONNX Runtime fp32 == PyTorch: max |Δlogit| = {bert_gap:.1e}")
assert bert_gap < 1e-3


def ort_acc(out):
    return sum((out[f"b{i}"].argmax(-1) == y).sum().item() for i, (_, _, y) in enumerate(val_batches)) / len(yva)


bert_deploy = {
    "fp32 (PyTorch)": (kb_t / 1024, lat["teacher", 1], lat["teacher", 32], teacher_acc),
    "int8 dynamic (PyTorch)": (serialized_kb(teacher_int8.state_dict()) / 1024, lat["teacher int8", 1],
                               lat["teacher int8", 32], teacher_int8_acc),
    "ONNX fp32 (ORT)": (info_b32["model_kb"] / 1024, info_b32["ms"]["time1"], info_b32["ms"]["time32"],
                        ort_acc(ort_b32)),
    "ONNX int8 (ORT)": (info_b8["model_kb"] / 1024, info_b8["ms"]["time1"], info_b8["ms"]["time32"], ort_acc(ort_b8)),
}
print(f"{'MiniLM teacher':24s}{'MB':>7s}{'ms b=1':>9s}{'ms b=32':>9s}{'speed-up b1/b32':>17s}{'accuracy':>10s}{'Δ pt':>7s}")
for name, (mb, l1, l32, acc) in bert_deploy.items():
    print(f"{name:24s}{mb:7.1f}{l1:9.1f}{l32:9.1f}{lat['teacher', 1] / l1:9.2f} /{lat['teacher', 32] / l32:5.2f}"
          f"{acc:10.4f}{100 * (acc - teacher_acc):+7.1f}")
assert abs(bert_deploy["ONNX fp32 (ORT)"][3] - teacher_acc) < 0.003

# %% [markdown]
# ### 10.3.4 BERT 模型的多頭注意力剪枝 · Pruning BERT's attention heads
#
# Michel 等人(2019)〈Are Sixteen Heads Really Better than One?〉:給每個頭一個閘門 $\xi_h=1$ 乘在它的輸出上,
# 重要性是 $|\partial\mathcal{L}/\partial\xi_h|$,也就是 $|\sum_\text{tokens}\langle\text{頭的輸出}, \partial\mathcal{L}/\partial\text{頭的輸出}\rangle|$,
# 在幾批資料上累加,每層再以 L2 範數正規化。我們的 `Bert` 支援 `head_mask`,所以閘門就是一個 `requires_grad` 的 head mask
# (transformers 5 已移除 `prune_heads` 與 `head_mask`,所以在我們自己的編碼器上做)。
# 移除頭:`Bert.prune_heads` 刪掉 Q/K/V 對應的列與輸出投影對應的行,矩陣真的變小;`helpers.compress.heads_to_prune`
# 選出最不重要的 $n$ 個頭,若會把某層的頭全部剪光就報 `ValueError`。

# %%
imp_ds = train_pool.select(range(IMPORTANCE_N))  # from the teacher's own training sentences
imp_batches = length_batches(encode(tok, imp_ds["sentence"], MAX_LEN), torch.tensor(imp_ds["label"]), 32)
t0 = time.perf_counter()
importance = head_importance(teacher, imp_batches)
imp_s = time.perf_counter() - t0
print(f"head importance from {IMPORTANCE_N} sentences in {imp_s:.1f} s")
fig, ax = plt.subplots(figsize=(6, 2.6))
im = ax.imshow(importance.numpy(), cmap="viridis", aspect="auto")
ax.set(xlabel="注意力頭 (head)", ylabel="層 (layer)", title="各注意力頭的重要性(每層正規化)")
fig.colorbar(im, ax=ax)
plt.show()

# %%
# pruned == masked: remove the 24 least important heads for good, compare with a head mask of zeros there
plan = heads_to_prune(importance, 24)
mask = torch.ones_like(importance)
for layer, hs in plan.items():
    mask[layer, hs] = 0
pruned = copy.deepcopy(teacher)
pruned.bert.prune_heads(plan)
ids, am, _ = val_batches[-1]
with torch.inference_mode():
    gap_heads = (pruned(ids, am) - classifier_logits(teacher, ids, am, head_mask=mask)).abs().max().item()
    gap_full = (pruned(ids, am) - teacher(ids, am)).abs().max().item()
print(f"heads per layer after pruning: {count_heads(pruned)}")
print(f"pruned vs masked: max |Δlogit| = {gap_heads:.1e} (vs the unpruned teacher: {gap_full:.2f})")
assert gap_heads < 1e-4 < gap_full
path = save_classifier(pruned, work / "pruned_teacher.safetensors", heads=count_heads(pruned))
reloaded, _ = load_classifier(path)
with torch.inference_mode():
    torch.testing.assert_close(reloaded(ids, am), pruned(ids, am))
print(f"saved and reloaded with its new shapes: {path.stat().st_size / 1e6:.1f} MB, q_proj of layer "
      f"{min(plan)} is now {tuple(reloaded.bert.blocks[min(plan)].self_attn.q_proj.weight.shape)}")

# %%
rand_scores = torch.rand(importance.shape, generator=torch.Generator().manual_seed(SEED))
curve = {("importance", 0): (teacher_acc, n_teacher, teacher_eval_s)}  # nothing removed: the teacher itself
for n in HEADS_REMOVED[1:]:
    for how, scores in (("importance", importance), ("random", rand_scores)):
        m = copy.deepcopy(teacher)
        m.bert.prune_heads(heads_to_prune(scores, n))
        t0 = time.perf_counter()
        curve[how, n] = (evaluate(m, val_batches), helpers.count_parameters(m), time.perf_counter() - t0)
        if how == "importance" and n == HEADS_REMOVED[-2]:
            with torch.inference_mode():
                lat["heads pruned", 32] = latency_ms(lambda: m(ids32, am32), repeat=5, warmup=1)
        print(f"{n:2d} heads removed by {how:10s}: accuracy {curve[how, n][0]:.4f}, {curve[how, n][1] / 1e6:.2f} M "
              f"parameters, validation pass {curve[how, n][2]:.1f} s")
curve["random", 0] = curve["importance", 0]
fig, ax = plt.subplots(figsize=(5, 3))
for how, label in (("importance", "依重要性"), ("random", "隨機")):
    ax.plot(HEADS_REMOVED, [curve[how, n][0] for n in HEADS_REMOVED], marker="o", label=label)
ax.set(xlabel="移除的注意力頭數(共 72)", ylabel="SST-2 驗證準確率", title="剪掉注意力頭(未再微調)")
ax.legend()
plt.show()
n_mid = HEADS_REMOVED[-2]
assert curve["importance", n_mid][0] >= curve["random", n_mid][0]

# %% [markdown]
# ## 10.4 本章小結 · Summary
#
# 本章量到的(全部 float32、2 核 CPU):
#
# - **蒸餾**:教師 MiniLM 0.8544;學生(0.052× 參數、檔案 0.055×)快一個數量級以上,但低 8–14 點。
#   在這個規模下 KD 與 CE 看不出差異(兩個種子),PCA 從教師初始化嵌入則多了 4.2 點。`KLDivLoss` 一定要用 `batchmean`,`mean` 會除以類別數。
# - **非結構化剪枝**:90 % 的權重剪掉、微調 1 個 epoch 後準確率 0.9650;遮罩讓檔案變成兩倍、速度沒有提升;CSR 儲存才變成 91 KB。
# - **結構化剪枝**:一半的卷積通道拿掉並重建(偏差折疊後與遮罩版完全相同),參數減半、延遲真的下降(倍數見下表),準確率 0.9594。
# - **部署**:剪枝 + int8 + ONNX Runtime:60 KB、準確率 0.9588;MiniLM int8 掉 0.3–0.8 點,加速幅度取決於 CPU 的 int8 指令。
# - **注意力頭剪枝**:依重要性剪掉 72 個頭中的 36 個,準確率 0.8326(−2.2 點,未再微調),隨機剪掉同樣多是 0.7878;剪 48 個時差距更大(0.8326 對 0.7317)。
#
# 下表把每種技術的大小、速度與準確率都寫成相對原模型的比值(CNN 的準確率相對「密集模型多訓練 1 個 epoch」)。

# %%
summary = {  # technique: (size ratio, speed-up, accuracy change in points)
    "distilled student (KD)": (kb_s / kb_t, speed32, 100 * (kd.mean() - teacher_acc)),
    "MiniLM int8 (PyTorch)": (bert_deploy["int8 dynamic (PyTorch)"][0] / bert_deploy["fp32 (PyTorch)"][0],
                              lat["teacher", 32] / lat["teacher int8", 32],
                              100 * (teacher_int8_acc - teacher_acc)),
    "MiniLM ONNX int8 (ORT)": (bert_deploy["ONNX int8 (ORT)"][0] / bert_deploy["fp32 (PyTorch)"][0],
                               lat["teacher", 32] / info_b8["ms"]["time32"],
                               100 * (bert_deploy["ONNX int8 (ORT)"][3] - teacher_acc)),
    f"MiniLM − {n_mid} heads": (curve["importance", n_mid][1] / n_teacher,
                               lat["teacher", 32] / lat["heads pruned", 32],
                               100 * (curve["importance", n_mid][0] - teacher_acc)),
    "CNN 90 % unstructured (CSR)": (kb_csr / kb_dense, ms_dense / ms_removed, 100 * (rows[2][2] - dense_ft_acc)),
    "CNN 50 % channels (rebuilt)": (n_rebuilt / n_cnn, ms_dense2 / ms_rebuilt, 100 * (acc_rebuilt - dense_ft_acc)),
    "CNN pruned + ONNX int8": (deploy["pruned, ONNX int8 (ORT)"][0] / deploy["fp32 (dense)"][0],
                               deploy["fp32 (dense)"][1] / deploy["pruned, ONNX int8 (ORT)"][1],
                               100 * (deploy["pruned, ONNX int8 (ORT)"][2] - dense_ft_acc)),
}
print(f"{'technique':30s}{'size ×':>8s}{'speed ×':>9s}{'Δ accuracy (pt)':>17s}")
print("(speed: batch 32 for MiniLM, 1000 images for the CNN, batch 1 for the deployed CNN)")
for k, (s, v, a) in summary.items():
    print(f"{k:30s}{s:8.2f}{v:9.2f}{a:+17.1f}")
helpers.report(
    10,
    teacher_acc=teacher_acc, student_ce_acc=ce.mean(), student_kd_acc=kd.mean(), student_param_ratio=param_ratio,
    student_speedup_b1=speed1, student_speedup_b32=speed32,
    mnist_fp32_kb=deploy["fp32 (dense)"][0], mnist_fp32_acc=dense_ft_acc,
    mnist_pruned_kb=deploy["pruned (rebuilt)"][0], mnist_pruned_acc=acc_rebuilt,
    mnist_int8_kb=deploy["pruned + int8 (PyTorch)"][0], mnist_int8_acc=deploy["pruned + int8 (PyTorch)"][2],
    mnist_onnx_int8_kb=deploy["pruned, ONNX int8 (ORT)"][0], mnist_onnx_int8_acc=deploy["pruned, ONNX int8 (ORT)"][2],
    mnist_onnx_int8_ms=deploy["pruned, ONNX int8 (ORT)"][1],
    minilm_int8_acc=teacher_int8_acc, minilm_ort_int8_acc=bert_deploy["ONNX int8 (ORT)"][3],
    heads_removed=n_mid, heads_imp_acc=curve["importance", n_mid][0], heads_rand_acc=curve["random", n_mid][0],
    heads_max_removed=HEADS_REMOVED[-1], heads_max_imp_acc=curve["importance", HEADS_REMOVED[-1]][0],
    heads_max_rand_acc=curve["random", HEADS_REMOVED[-1]][0],
)

# %% [markdown]
# ## 10.5 思考題 · Exercises
#
# **1.** 對學生 logits $s$ 求 KD 損失的梯度,證明它等於
# $\frac{1}{B}\big[\alpha T\,(\mathrm{softmax}(s/T)-\mathrm{softmax}(t/T)) + (1-\alpha)(\mathrm{softmax}(s)-\mathrm{onehot}(y))\big]$,
# 並用 autograd 驗證。由此說明為什麼要乘 $T^2$。

# %% tags=["answer"]
s = s_lg.clone().requires_grad_(True)
T, a = 4.0, 0.7
(g_auto,) = torch.autograd.grad(kd_loss(s, t_lg, y, T, a), s)
B = len(y)
g_formula = (a * T * (F.softmax(s_lg / T, -1) - F.softmax(t_lg / T, -1))
             + (1 - a) * (F.softmax(s_lg, -1) - F.one_hot(y, 2).float())) / B
torch.testing.assert_close(g_auto, g_formula)
print(f"autograd == formula (max |Δ| {(g_auto - g_formula).abs().max():.1e}).")
print("Without T² the soft term's gradient would carry a factor 1/T instead of T, and (p_s − p_t) itself shrinks like "
      "1/T, so it would fade as 1/T²; multiplying by T² keeps it on the scale of the hard-label term.")

# %% [markdown]
# **2.** 在 10.3.2 重建後的 CNN 上,再用 `shrink_pair` 把 `fc1` 的 128 個神經元剪掉一半(依 L2 範數),
# 確認「遮罩版」與「重建版」輸出相同,並看參數與準確率的變化(不再微調)。

# %% tags=["answer"]
masked_fc = copy.deepcopy(rebuilt)
prune.ln_structured(masked_fc.fc1, "weight", amount=0.5, n=2, dim=0)
prune.remove(masked_fc.fc1, "weight")
k3 = kept_units(masked_fc.fc1.weight)
smaller = copy.deepcopy(masked_fc)
smaller.fc1, smaller.fc2 = shrink_pair(masked_fc.fc1, masked_fc.fc2, k3)
with torch.inference_mode():
    torch.testing.assert_close(smaller(x1000), masked_fc(x1000), rtol=1e-4, atol=1e-4)
print(f"fc1 neurons {masked_fc.fc1.out_features} → {len(k3)}: parameters {n_rebuilt:,} → "
      f"{helpers.count_parameters(smaller):,}; accuracy {acc_rebuilt:.4f} → {mnist_acc(smaller):.4f} (no fine-tuning)")
print("The fold makes the rebuilt network exact here too; halving fc1 without a fine-tune costs the accuracy "
      "printed above, so a short fine-tune (as in 10.3.2) would be the next step.")

# %% [markdown]
# **3.** 非結構化剪枝之後,用 CSR(int32 索引)存 `fc1` 的權重,稀疏度要多高才比密集儲存小?
# 先推公式,再對 50 %–95 % 的稀疏度實測。

# %% tags=["answer"]
w_fc1 = cnn.fc1.weight.detach()
rows_fc, cols_fc = w_fc1.shape
print(f"dense: 4 bytes per weight; CSR: 8 bytes per non-zero (value + column) + 4 × {rows_fc + 1} row pointers "
      f"→ smaller once more than half the weights are zero")
for sp in (0.5, 0.6, 0.8, 0.95):
    w = w_fc1.clone()
    w[w.abs() <= w.abs().flatten().quantile(sp)] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ratio = serialized_kb(to_csr(w)) / serialized_kb(w)
    print(f"sparsity {sp:.0%}: CSR / dense file size = {ratio:.2f}")
print("Sparse storage pays off only past about 50 % zeros with int32 indices (past 67 % with int64), which is why "
      "global magnitude pruning is usually pushed to 80–95 %.")
