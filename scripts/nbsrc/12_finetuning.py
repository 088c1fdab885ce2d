"""Source of notebooks/12_finetuning.ipynb (percent format). Build: python scripts/nbsrc/build.py scripts/nbsrc/12_finetuning.py"""
# %% [markdown]
# # 第 12 章 模型微調實戰 · Fine-tuning in practice
#
# 這是全書最後一章,也是讀者最常直接抄進自己專案的一章。它不再介紹新架構,而是把微調(fine-tuning)做成一套
# 細心工作者的流程:
#
# 1. **資料**:清洗、去重(含第 6 章的 MinHash 近似重複)、分層切分(stratified split),並**量測**資料外洩
#    (leakage)會把測試分數灌高多少;資料增強(augmentation)也用多個種子量測,而不是假設它有用;
# 2. **凍結策略**:只訓練分類頭、解凍最上面幾層、全部解凍、逐步解凍(gradual unfreezing)與分層學習率
#    (discriminative learning rates),附上每種設定的秒數;
# 3. **超參數搜尋**:小型隨機搜尋(random search)加早停(early stopping),寫明搜尋的成本;
# 4. **評估與推論最佳化**:macro-F1、混淆矩陣、校準(calibration,ECE 與溫度縮放)、最有把握的錯誤、
#    長度排序批次、動態 int8 量化與 ONNX Runtime;
# 5. **綜合案例**:從頭做一個中文評論情感分類器——字元級 BERT 先在無標籤中文文本上做 MLM 預訓練再微調,
#    與同一模型從零訓練、以及字元 n-gram TF-IDF + 邏輯迴歸比較,最後存檔,提供 `predict()`、命令列與互動小工具。
#
# 12.2–12.4 用 all-MiniLM-L6-v2 與英文 SST-2(那裡才有預訓練好的層可以凍結);12.1 與 12.5 用中文評論。

# %%
import copy
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import ipywidgets
import jieba
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display
from onnxruntime.quantization import QuantType, quantize_dynamic
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.model_selection import cross_val_predict
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer

import helpers
from helpers.bert import Bert, BertClassifier, BertConfig, BertForMLM, from_pretrained, mask_tokens, mean_pool
from helpers.data import (
    bert_chinese_tokenizer,
    length_batches,
    load_cilin,
    load_sst2,
    load_zh_novel,
    load_zh_reviews,
    minilm_path,
)
from helpers.finetune import (
    ReviewClassifier,
    build_char_vocab,
    default_model_dir,
    expected_calibration_error,
    fit_temperature,
    load_review_classifier,
    predict,
    reliability_bins,
    remap_ids,
    save_review_classifier,
    stratified_split,
)
from helpers.optim import make_scheduler
from helpers.text import (
    char_noise,
    cilin_synonyms,
    clean_text,
    dedup_exact,
    eda,
    minhash_signatures,
    near_duplicates,
    shingles,
)

helpers.set_style()
warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.onnx's legacy exporter and torch.ao say so
jieba.setLogLevel(60)
device = helpers.get_device()
print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, device {device}, "
      f"{torch.get_num_threads()} threads, native bf16: {helpers.bf16_fast(device)}")

# %% [markdown]
# **設定 · Configuration.** 為 2 核 CPU(float32)設定:每個實驗都是固定的步數或樣本數,不是固定的秒數。註解寫出在
# GPU 上可以調高的數值。

# %%
SEED = 0
SPLIT = (0.8, 0.1, 0.1)  # train / validation / test, stratified by (source, label)
NEAR_DUP = 0.8  # estimated Jaccard of 3-character shingles above which two reviews are near-duplicates
NUM_PERM, BANDS = 64, 16  # MinHash signature length and LSH bands
LEAK_POOL, LEAK_COPIES, LEAK_P = 1000, 2, 0.1  # leakage demo: reviews, noisy copies each, char-noise rate
AUG_N, AUG_COPIES = 300, 4  # augmentation: small training subsets and variants per review; GPU: 3_000
SEEDS = (0, 1, 2)  # every comparison whose gap could be noise runs on these seeds
SST_BATCH, SST_MAX_LEN = 32, 64
FREEZE_STEPS = 16  # optimizer steps per freezing strategy; GPU: 600
VAL_N, TEST_N = 300, 300  # SST-2 validation: the first 300 sentences select and calibrate, the next 300 are the test set; GPU: 300, 572
LR_HEAD, LR_BODY, LAYER_DECAY, TOP_K = 3e-3, 2e-4, 0.7, 2
SEARCH_TRIALS, SEARCH_N, SEARCH_EPOCHS, PATIENCE = 12, 512, 12, 2  # random search on cached features; GPU: full fine-tuning trials
ECE_BINS = 10
MAX_CHARS = 48  # characters per window of the Chinese model, [CLS] and [SEP] included; GPU: 256
ZH_HIDDEN, ZH_LAYERS, ZH_HEADS, ZH_FFN = 128, 2, 2, 512  # GPU: start from a pretrained bert-base-chinese instead
MIN_COUNT = 2  # characters seen fewer times become [UNK]
MLM_STEPS, MLM_BATCH, MLM_LR = 120, 64, 2e-3  # GPU: 20_000 steps
FT_STEPS, FT_BATCH = 60, 64  # fine-tuning steps per run; GPU: 3 epochs
FT_LRS = (1e-3, 3e-4)  # each initialisation gets the one of these that is best on validation (seed 0)
NOVEL, NOVEL_LINES = "xiyouji", 3000  # unlabelled text for pretraining, besides the training reviews; GPU: all four novels

# %% [markdown]
# ## 12.1 微調資料集的選擇與準備 · Choosing and preparing a fine-tuning dataset
#
# 資料集的選擇先於一切:任務要與資料的分布相符。我們要一個「讀中文評論、判斷正負面」的模型,所以合併資料鏡像中的
# 兩個中文評論集:ChnSentiCorp 酒店評論(hotel)與 waimai_10k 外賣評論(waimai)。兩者的正負比例、長度都不同,
# 這正是後面切分時要「分層」的原因。
#
# ### 12.1.1 資料集準備與清洗 · Preparing and cleaning the dataset
#
# 清洗(cleaning)依序做:統一全形/半形與 Unicode(第 6 章的 `clean_text`),丟掉空白評論,刪除完全重複(exact
# duplicates),再用 MinHash + LSH 找近似重複(near-duplicates)只留一份。

# %%
raw = {name: load_zh_reviews(name) for name in ("hotel", "waimai")}
texts0, labels0, source0 = [], [], []
for s, ds in enumerate(raw.values()):
    texts0 += [clean_text(r or "") for r in ds["review"]]
    labels0 += list(ds["label"])
    source0 += [s] * len(ds)
nonempty = [i for i, t in enumerate(texts0) if t]
unique = [nonempty[i] for i in dedup_exact([texts0[i] for i in nonempty])]
t0 = time.perf_counter()
sigs = minhash_signatures([shingles(texts0[i], 3) for i in unique], num_perm=NUM_PERM, seed=SEED)
pairs = near_duplicates(sigs, NEAR_DUP, bands=BANDS)
minhash_s = time.perf_counter() - t0
drop = {unique[j] for _, j, _ in pairs}  # keep the first review of each pair
keep = [i for i in unique if i not in drop]
conflicts = [(unique[i], unique[j]) for i, j, _ in pairs if labels0[unique[i]] != labels0[unique[j]]]
texts = [texts0[i] for i in keep]
labels = np.array([labels0[i] for i in keep])
source = np.array([source0[i] for i in keep])
print(f"{len(texts0):,} reviews → {len(nonempty):,} non-empty → {len(unique):,} after exact dedup → {len(texts):,} "
      f"after {len(pairs)} near-duplicate pairs (MinHash + LSH, {minhash_s:.1f} s)")
print(f"{len(conflicts)} near-duplicate pairs carry opposite labels, e.g.:")
for i, j in conflicts[:3]:
    print(f"  {labels0[i]} {texts0[i][:40]!r}\n  {labels0[j]} {texts0[j][:40]!r}")
assert len(texts) < len(unique) < len(texts0)

# %% [markdown]
# 長度統計決定模型的視窗大小。外賣評論很短,酒店評論長得多:

# %%
lengths = np.array([len(t) for t in texts])
names = list(raw)
fig, ax = plt.subplots(figsize=(6, 2.8))
for s, name in enumerate(names):
    L = lengths[source == s]
    print(f"{name}: {len(L):,} reviews, {labels[source == s].mean():.1%} positive, characters median {np.median(L):.0f}, "
          f"90th percentile {np.percentile(L, 90):.0f}, ≤ {MAX_CHARS - 2} chars: {(L <= MAX_CHARS - 2).mean():.1%}")
    ax.hist(np.clip(L, 0, 400), bins=80, alpha=0.6, label=f"{name}({len(L):,} 則)")
ax.axvline(MAX_CHARS - 2, color="k", ls="--", lw=1)
ax.set(xlabel="評論長度(字元,400 以上併入最後一格)", ylabel="評論數", title="兩個中文評論集的長度分布")
ax.legend()
plt.show()

# %% [markdown]
# ### 12.1.2 資料集分割 · Splitting the dataset
#
# **先把測試集放到一邊**,之後的一切選擇(特徵、超參數、溫度)只看訓練與驗證集。`stratified_split` 依
# (來源, 標籤) 分層:每一組在 train / validation / test 中的比例相同,所以三份資料的正面比例與酒店/外賣比例都一致。

# %%
strata = [(int(s), int(y)) for s, y in zip(source, labels)]
tr_idx, va_idx, te_idx = stratified_split(strata, SPLIT, seed=SEED)
assert not (set(tr_idx) & set(va_idx) or set(tr_idx) & set(te_idx) or set(va_idx) & set(te_idx))
split_table = pd.DataFrame({part: {"reviews": len(ix), "positive": labels[ix].mean(), "hotel share": (source[ix] == 0).mean()}
                            for part, ix in (("train", tr_idx), ("validation", va_idx), ("test", te_idx))}).T
print(split_table.round(3).to_string())
assert np.ptp(split_table["positive"]) < 0.005 and np.ptp(split_table["hotel share"]) < 0.005

# %% [markdown]
# 一個便宜而強的基線(baseline):字元 1–3-gram TF-IDF + 邏輯迴歸(logistic regression)。它也是**找標籤雜訊**
# (label noise)的工具:對訓練集做 3 折交叉預測(cross-validated predictions),模型有把握地反對的標籤值得人工複查。

# %%
t0 = time.perf_counter()
vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
X_tr = vec.fit_transform([texts[i] for i in tr_idx])
X_va, X_te = vec.transform([texts[i] for i in va_idx]), vec.transform([texts[i] for i in te_idx])
tfidf = LogisticRegression(C=10, max_iter=1000).fit(X_tr, labels[tr_idx])
tfidf_s = time.perf_counter() - t0
tfidf_val = tfidf.score(X_va, labels[va_idx])
print(f"TF-IDF + LR: {X_tr.shape[1]:,} features, validation accuracy {tfidf_val:.1%}, {tfidf_s:.1f} s")
oof = cross_val_predict(LogisticRegression(C=10, max_iter=1000), X_tr, labels[tr_idx], cv=3, method="predict_proba")
p_given = oof[np.arange(len(tr_idx)), labels[tr_idx]]
suspects = np.argsort(p_given)[:5]
print(f"training reviews whose label the out-of-fold model gives < 5 %: {(p_given < 0.05).sum()} "
      f"of {len(tr_idx):,}; the five most suspicious:")
for k in suspects:
    print(f"  label {labels[tr_idx[k]]}, p(label) {p_given[k]:.3f}: {texts[tr_idx[k]][:50]!r}")

# %% [markdown]
# **資料外洩(leakage)的量測。** 一個常見錯誤:先做資料增強(或資料裡本來就有近似重複),**再**隨機切分。
# 同一則評論的變體會同時落在訓練集與測試集,測試分數於是量到的是「記憶」而不是「泛化」。下面從訓練集取
# `LEAK_POOL` 則評論,每則做 `LEAK_COPIES` 份字元雜訊(`char_noise`)變體,比較兩種做法,3 個種子:
#
# - **錯誤**:原文與變體混在一起再切 80/20;
# - **正確**:先按評論切 80/20,只有訓練部分加入變體。
#
# 兩個模型也都在真正的驗證集上評估:那才是它們的實力。

# %%
def fit_eval(train_texts, train_y, test_texts, test_y):
    clf = LogisticRegression(C=10, max_iter=1000).fit(vec.transform(train_texts), train_y)
    return clf.score(vec.transform(test_texts), test_y), clf.score(X_va, labels[va_idx])


leak = {"wrong: augment, then split": [], "right: split, then augment": []}
val_of = {k: [] for k in leak}
for seed in SEEDS:
    rng = np.random.default_rng(seed)
    pool = rng.choice(tr_idx, LEAK_POOL, replace=False)
    copies = {i: [char_noise(texts[i], LEAK_P, int(seed) * 100_000 + c * 50_000 + int(i)) for c in range(LEAK_COPIES)]
              for i in pool}
    items = [(t, labels[i]) for i in pool for t in [texts[i], *copies[i]]]
    perm = rng.permutation(len(items))
    cut = int(0.8 * len(items))
    a, b = [items[k] for k in perm[:cut]], [items[k] for k in perm[cut:]]
    test_acc, val_acc = fit_eval([t for t, _ in a], [y for _, y in a], [t for t, _ in b], [y for _, y in b])
    leak["wrong: augment, then split"].append(test_acc)
    val_of["wrong: augment, then split"].append(val_acc)
    tr_pool, te_pool = pool[:int(0.8 * LEAK_POOL)], pool[int(0.8 * LEAK_POOL):]
    a = [(t, labels[i]) for i in tr_pool for t in [texts[i], *copies[i]]]
    test_acc, val_acc = fit_eval([t for t, _ in a], [y for _, y in a], [texts[i] for i in te_pool], labels[te_pool])
    leak["right: split, then augment"].append(test_acc)
    val_of["right: split, then augment"].append(val_acc)
for k in leak:
    print(f"{k:28s} test {np.mean(leak[k]):.1%} ± {np.std(leak[k]):.1%}   true validation "
          f"{np.mean(val_of[k]):.1%} ± {np.std(val_of[k]):.1%}   ({len(SEEDS)} seeds)")
inflation = np.mean(leak["wrong: augment, then split"]) - np.mean(leak["right: split, then augment"])
noise_leak = max(np.std(leak["wrong: augment, then split"]), np.std(leak["right: split, then augment"]))
print(f"leakage inflates the test score by {inflation * 100:.1f} points (seed sd ≤ {noise_leak * 100:.1f})")
assert inflation > 3 * noise_leak and inflation > 0.02
assert abs(np.mean(val_of["wrong: augment, then split"]) - np.mean(val_of["right: split, then augment"])) < inflation

# %% [markdown]
# ### 12.1.3 資料增強 · Data augmentation
#
# 增強在**小**資料上最可能有用,所以用 `AUG_N` 則訓練評論的小子集量測,每則加 `AUG_COPIES` 份變體:
#
# - **中文 EDA**(第 6 章):jieba 分詞後做同義詞替換/插入(哈工大《同義詞詞林》擴展版)、隨機交換、隨機刪除;
# - **字元雜訊**(character noise):刪除、交換、替換或重複個別字元,不需要分詞也不需要詞典。
#
# 每個條件 3 個種子(不同的子集與變體),在驗證集上評估。

# %%
cilin = cilin_synonyms(load_cilin())
aug_acc = {"none": [], "EDA (Cilin + jieba)": [], "char noise": []}
t0 = time.perf_counter()
for seed in SEEDS:
    sub = np.random.default_rng(100 + seed).choice(tr_idx, AUG_N, replace=False)
    base_t, base_y = [texts[i] for i in sub], labels[sub]
    variants = {"none": ([], []),
                "EDA (Cilin + jieba)": ([v for i in sub for v in eda(texts[i], int(seed) * 10**6 + int(i), cilin, lang="zh",
                                                                    n_aug=AUG_COPIES, stopwords=frozenset())],
                                        np.repeat(base_y, AUG_COPIES)),
                "char noise": ([char_noise(texts[i], 0.1, int(seed) * 10**6 + c * 10**5 + int(i))
                                for i in sub for c in range(AUG_COPIES)], np.repeat(base_y, AUG_COPIES))}
    for k, (vt, vy) in variants.items():
        clf = LogisticRegression(C=10, max_iter=1000).fit(vec.transform(base_t + vt), np.concatenate([base_y, vy]))
        aug_acc[k].append(clf.score(X_va, labels[va_idx]))
aug_s = time.perf_counter() - t0
print(f"TF-IDF + LR on {AUG_N} training reviews (+{AUG_COPIES} variants each), validation accuracy over "
      f"{len(SEEDS)} seeds ({aug_s:.1f} s):")
for k, v in aug_acc.items():
    print(f"  {k:20s} {np.mean(v):.1%} ± {np.std(v):.1%}   gain {100 * (np.mean(v) - np.mean(aug_acc['none'])):+.1f} pt")
ex = texts[tr_idx[3]]
print("an EDA variant:", eda(ex, 0, cilin, lang="zh", n_aug=1, stopwords=frozenset())[0][:60])
print("original      :", ex[:60])

# %% [markdown]
# 三個種子上,兩種增強都讓 300 則的小訓練集在驗證集上多了 2 點多(EDA +2.4、字元雜訊 +2.3 點),但無增強那一列的種子標準差
# 就有 2.8 點:**此規模下只能說「可能有小幅幫助」**,兩種增強之間看不出差異。也看看上面的 EDA 變體:詞林把「不」換成了
# 「匪」、把「没有」換成了「付之东流」——同義詞替換會改變語氣,對情感任務尤其危險,用之前先讀幾十個變體。

# %% [markdown]
# ## 12.2 層級凍結與部分解凍策略 · Freezing layers and partial unfreezing
#
# 從這裡到 12.4 用預訓練的 all-MiniLM-L6-v2(6 層,平均池化分類頭,第 5 章)與英文 SST-2:那裡才有預訓練好的層可以凍結。
# 五種策略用**相同的**批次、**相同的**步數(`FREEZE_STEPS` 步 × 32 句,依長度分桶,詞嵌入一律凍結):
#
# | 策略 | 訓練的參數 |
# |---|---|
# | 只訓練分類頭(head only) | 分類頭 |
# | 解凍最上面 k 層(top-k) | 最上面 `TOP_K` 層 + 分類頭 |
# | 全部解凍(all layers) | 全部 6 層 + 分類頭 |
# | 逐步解凍(gradual, ULMFiT) | 先只有分類頭,之後每一段多解凍一層(由上往下) |
# | 分層學習率(discriminative) | 全部,但第 l 層的學習率是 `LR_BODY × LAYER_DECAY^(6−l)` |

# %%
tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
minilm = from_pretrained()
sst = load_sst2()
sst_train = sst["train"].shuffle(seed=SEED).select(range(max(FREEZE_STEPS * SST_BATCH, SEARCH_N)))
sst_val = sst["validation"]


def encode(sentences):
    return tok(list(sentences), truncation=True, max_length=SST_MAX_LEN)["input_ids"]


X_sst = encode(sst_train["sentence"])
y_sst = torch.tensor(sst_train["label"])
Xv_sst, yv_sst = encode(sst_val["sentence"]), torch.tensor(sst_val["label"])
train_batches = length_batches(X_sst[:FREEZE_STEPS * SST_BATCH], y_sst[:FREEZE_STEPS * SST_BATCH], SST_BATCH,
                               shuffle_seed=SEED)
sel_batches = length_batches(Xv_sst[:VAL_N], yv_sst[:VAL_N], 128)  # selection / calibration
test_batches = length_batches(Xv_sst[VAL_N:VAL_N + TEST_N], yv_sst[VAL_N:VAL_N + TEST_N], 128)  # touched only in 12.4
n_layers = len(minilm.blocks)
print(f"{len(train_batches)} batches of {SST_BATCH}; selection set {VAL_N}, test set {TEST_N} sentences")


@torch.no_grad()
def logits_of(model, batches):
    model.eval()
    out, ys = [], []
    for ids, am, y in batches:
        out.append(model(ids.to(device), am.to(device)).float().cpu())
        ys.append(y)
    return torch.cat(out), torch.cat(ys)


def sst_accuracy(model, batches=sel_batches):
    z, y = logits_of(model, batches)
    return (z.argmax(-1) == y).float().mean().item()


def layer_of(name):
    """Which encoder layer a parameter belongs to (0 = embeddings, 1..6 = blocks, 7 = head/pooler)."""
    if name.startswith("bert.blocks."):
        return int(name.split(".")[2]) + 1
    return 0 if "embeddings" in name else n_layers + 1


def run_strategy(strategy, steps=FREEZE_STEPS, seed=SEED):
    """Train a fresh MiniLM classifier with one freezing strategy; return (model, per-step losses, seconds)."""
    helpers.seed_everything(seed)
    model = BertClassifier(copy.deepcopy(minilm), num_labels=2, pooling="mean").to(device)
    groups = {}
    for name, p in model.named_parameters():
        layer = layer_of(name)
        if name == "bert.embeddings.word.weight" or "pooler" in name:
            p.requires_grad_(False)
            continue
        if layer == n_layers + 1:
            lr = LR_HEAD
        elif strategy == "discriminative":
            lr = LR_BODY * LAYER_DECAY ** (n_layers - layer)
        else:
            lr = LR_BODY
        trainable = {"head only": layer == n_layers + 1, "top-k": layer > n_layers - TOP_K}.get(strategy, True)
        p.requires_grad_(trainable)
        groups.setdefault((lr, layer), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": lr, "layer": layer} for (lr, layer), ps in groups.items()],
                            weight_decay=0.01)
    sched = make_scheduler(opt, "linear", total_steps=steps, warmup_steps=max(1, steps // 10))
    losses, t0 = [], time.perf_counter()
    model.train()
    for step, (ids, am, y) in enumerate(train_batches[:steps]):
        if strategy == "gradual":  # phase k of n_layers + 1: head, then one more block from the top each phase
            phase = step * (n_layers + 1) // steps
            for g in opt.param_groups:
                for p in g["params"]:
                    p.requires_grad_(g["layer"] > n_layers - phase)
        loss = F.cross_entropy(model(ids.to(device), am.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses, time.perf_counter() - t0


strategies = ("head only", "top-k", "all layers", "gradual", "discriminative")
freeze = {}
for s in tqdm(strategies, desc="strategies"):
    model, losses, secs = run_strategy(s)
    freeze[s] = dict(model=model, losses=losses, seconds=secs, acc=sst_accuracy(model),
                     trainable=helpers.count_parameters(model, trainable_only=True))
majority = max(yv_sst[:VAL_N].float().mean().item(), 1 - yv_sst[:VAL_N].float().mean().item())
print(f"majority class {majority:.1%}; standard error of an accuracy near 75 % on {VAL_N} sentences: "
      f"{math.sqrt(0.75 * 0.25 / VAL_N):.1%}")
for s, r in freeze.items():
    print(f"{s:15s} selection accuracy {r['acc']:.1%}   {r['seconds']:5.1f} s   trainable at the end {r['trainable']:,}")

# %% [markdown]
# 學習曲線(訓練損失,5 步移動平均)畫在同一張圖上:

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for s, r in freeze.items():
    smooth = np.convolve(r["losses"], np.ones(5) / 5, mode="valid")
    ax.plot(np.arange(5, len(r["losses"]) + 1), smooth, label=f"{s}({r['acc']:.1%})")
ax.set(xlabel="步數", ylabel="訓練損失(5 步平均)", title="五種凍結策略的學習曲線(MiniLM,SST-2)")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# 只有 16 步、單一種子,所以只讀大的差距:全部解凍(76.7 %)比只訓練分類頭(60.0 %)高 16.7 點,也比解凍最上面兩層
# (67.7 %)高 9 點——這遠大於 300 句選擇集的抽樣誤差(上面印出的標準誤)。步數這麼少時,能動的層越多,學得越快;
# 分類頭只有 770 個參數,但每步最便宜。逐步解凍(72.7 %)的前幾段只訓練上層,分層學習率(63.7 %)讓最底層只拿到
# $0.7^5 \approx 0.17$ 倍的學習率:兩者都是為了**長時間**微調時保護預訓練知識而設計的,在 16 步的預算下反而吃虧;
# 它們和全部解凍之間的細節差距,此規模下不下結論。

# %% [markdown]
# ## 12.3 模型參數調整與最佳化技巧 · Tuning hyper-parameters and optimization tricks
#
# 超參數搜尋(hyper-parameter search)最大的敵人是成本:12.2 的一次完整微調要幾秒到幾十秒,十幾次試驗就超出本章的
# 預算。這裡示範做法本身:把 MiniLM 凍結,句子向量(平均池化)**只算一次**存起來,在上面訓練分類頭;隨機搜尋
# (random search,Bergstra & Bengio 2012)在對數尺度上抽學習率與權重衰減(weight decay),在清單中抽批次大小與預熱
# (warm-up)比例;每個 epoch 在選擇集上評估,`PATIENCE` 個 epoch 沒進步就早停(early stopping),留下最佳 epoch 的權重。

# %%
t0 = time.perf_counter()
with torch.no_grad():
    minilm.eval()

    def features(X):
        """Mean-pooled MiniLM sentence vectors in the order of X (computed in length-sorted batches)."""
        vecs, rows = [], []
        for ids, am, row in length_batches(X, torch.arange(len(X)), 128):
            vecs.append(mean_pool(minilm(ids, am), am))
            rows.append(row)
        return torch.cat(vecs)[torch.argsort(torch.cat(rows))]

    F_tr, F_sel, F_te = features(X_sst[:SEARCH_N]), features(Xv_sst[:VAL_N]), features(Xv_sst[VAL_N:VAL_N + TEST_N])
feat_s = time.perf_counter() - t0
print(f"features of {SEARCH_N + VAL_N + TEST_N:,} sentences computed once: {feat_s:.1f} s")


def train_head(lr, batch, warmup, wd, seed=SEED, epochs=SEARCH_EPOCHS):
    """Linear head on frozen features; early stopping on the selection set. Returns (best acc, epochs run, head)."""
    torch.manual_seed(seed)
    head = nn.Linear(F_tr.shape[1], 2)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    per_epoch = math.ceil(len(F_tr) / batch)
    sched = make_scheduler(opt, "linear", total_steps=epochs * per_epoch, warmup_steps=max(1, int(warmup * epochs * per_epoch)))
    best, best_state, bad, ran = -1.0, None, 0, 0
    for ran in range(1, epochs + 1):  # noqa: B007 (ran is the number of epochs run, returned below)
        for idx in torch.randperm(len(F_tr)).split(batch):
            loss = F.cross_entropy(head(F_tr[idx]), y_sst[:SEARCH_N][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            acc = (head(F_sel).argmax(-1) == yv_sst[:VAL_N]).float().mean().item()
        if acc > best:
            best, best_state, bad = acc, copy.deepcopy(head.state_dict()), 0
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    head.load_state_dict(best_state)
    return best, ran, head


rng = np.random.default_rng(SEED)
trials = []
t0 = time.perf_counter()
for _ in tqdm(range(SEARCH_TRIALS), desc="random search"):
    hp = dict(lr=float(10 ** rng.uniform(-4, -1)), batch=int(rng.choice([16, 32, 64, 128])),
              warmup=float(rng.choice([0.0, 0.1, 0.3])), wd=float(10 ** rng.uniform(-4, -1)))
    t1 = time.perf_counter()
    acc, epochs_run, head = train_head(**hp)
    trials.append(dict(hp, acc=acc, epochs=epochs_run, seconds=time.perf_counter() - t1, head=head))
search_s = time.perf_counter() - t0
table = pd.DataFrame(trials).drop(columns="head").sort_values("acc", ascending=False)
print(table.round({"lr": 5, "wd": 5, "acc": 3, "seconds": 2}).to_string(index=False))
best_trial = max(trials, key=lambda r: r["acc"])
with torch.no_grad():
    search_test = (best_trial["head"](F_te).argmax(-1) == yv_sst[VAL_N:VAL_N + TEST_N]).float().mean().item()
print(f"search: {SEARCH_TRIALS} trials in {search_s:.1f} s (+ {feat_s:.1f} s of features); best selection accuracy "
      f"{best_trial['acc']:.1%}, its test accuracy {search_test:.1%}; early stopping ran "
      f"{table['epochs'].mean():.1f} of {SEARCH_EPOCHS} epochs on average")
full_ft_s = freeze["all layers"]["seconds"] / FREEZE_STEPS * math.ceil(SEARCH_N / SST_BATCH) * SEARCH_EPOCHS
print(f"the same search with full fine-tuning would cost about {SEARCH_TRIALS} × {full_ft_s:.0f} s "
      f"= {SEARCH_TRIALS * full_ft_s / 60:.0f} min on this CPU (12.2's seconds per step)")

# %% [markdown]
# 敏感度圖(sensitivity plot):每個超參數對選擇集準確率的影響。

# %%
fig, axes = plt.subplots(1, 4, figsize=(9, 2.4), sharey=True)
for ax, key, log in zip(axes, ("lr", "batch", "warmup", "wd"), (True, True, False, True)):
    ax.scatter(table[key], table["acc"], s=18)
    ax.set(xlabel={"lr": "學習率", "batch": "批次大小", "warmup": "預熱比例", "wd": "權重衰減"}[key],
           xscale="log" if log else "linear")
axes[0].set_ylabel("選擇集準確率")
fig.suptitle(f"隨機搜尋 {SEARCH_TRIALS} 次:各超參數的敏感度", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# 最佳試驗在選擇集上 81.7 %,在測試集上只有 75.0 %:從 12 個試驗中挑最好的一個,本身就會高估(winner's curse),
# 所以**最終數字一定要在沒參與挑選的資料上量**。敏感度圖最清楚的訊息是學習率:≤ 3.4e-4 的試驗明顯較差(67.0–74.3 %),
# 其餘超參數在這個範圍內影響很小。早停平均只跑了 7.4 / 12 個 epoch,省下近四成的計算。搜尋本身只花幾秒,因為昂貴的
# 編碼器只算了一次;最後一行估計同樣的搜尋改用完整微調要多久——這就是實務上先在小預算(小模型、凍結特徵、少步數)
# 上篩選,再只對少數候選做完整訓練的原因。

# %% [markdown]
# ## 12.4 微調後的模型評估與推理最佳化 · Evaluating the fine-tuned model and optimizing inference
#
# 評估 12.2 中選擇集準確率最高的模型,現在第一次用測試集(`TEST_N` 句)。準確率之外:macro-F1(兩類 F1 的平均,類別不平衡時
# 比準確率誠實)、混淆矩陣(confusion matrix)。

# %%
best_name = max(freeze, key=lambda s: freeze[s]["acc"])
clf = freeze[best_name]["model"].eval()
z_sel, y_sel = logits_of(clf, sel_batches)
z_te, y_te = logits_of(clf, test_batches)
pred_te = z_te.argmax(-1)
test_acc = (pred_te == y_te).float().mean().item()
macro_f1 = f1_score(y_te, pred_te, average="macro")
cm = confusion_matrix(y_te, pred_te)
print(f"model: {best_name}; test accuracy {test_acc:.1%}, macro-F1 {macro_f1:.3f}")
fig, ax = plt.subplots(figsize=(3, 2.8))
ax.imshow(cm, cmap="Blues")
for (r, c), v in np.ndenumerate(cm):
    ax.text(c, r, str(v), ha="center", va="center")
ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["負面", "正面"], yticklabels=["負面", "正面"],
       xlabel="預測", ylabel="真實", title="混淆矩陣(SST-2 測試集)")
plt.show()

# %% [markdown]
# **校準(calibration)。** 模型說「90 % 有把握」時,是否真的九成答對?期望校準誤差(expected calibration error, ECE)
# 把預測依信心分成 10 格,加權平均每格「準確率 − 平均信心」的絕對值。溫度縮放(temperature scaling,Guo 等人 2017)
# 把 logits 除以一個純量 T:T 只在**驗證(選擇)集**上擬合(最小化交叉熵),再到測試集上量 ECE。除以正數不改變 argmax,
# 所以準確率不變。任何輸出 logits 的模型都適用:這裡量兩個模型——12.1 的中文 TF-IDF + 邏輯迴歸(logits = [0, 決策值],
# 驗證與測試各約 2,000 則),以及上面只訓練了 16 步的 MiniLM(各 300 句)。

# %%
def tfidf_logits(X):
    return torch.tensor(np.stack([np.zeros(X.shape[0]), tfidf.decision_function(X)], 1))


zva_tf, zte_tf = tfidf_logits(X_va), tfidf_logits(X_te)
yva_tf, yte_tf = torch.tensor(labels[va_idx]), torch.tensor(labels[te_idx])
T_tf = fit_temperature(zva_tf, yva_tf)
p_before, p_after = F.softmax(zte_tf, -1), F.softmax(zte_tf / T_tf, -1)
ece_tf = [expected_calibration_error(p, yte_tf, ECE_BINS) for p in (p_before, p_after)]
print(f"TF-IDF + LR (Chinese): T = {T_tf:.2f} fitted on {len(va_idx):,} validation reviews; test ECE {ece_tf[0]:.3f} → "
      f"{ece_tf[1]:.3f}; mean confidence {p_before.max(-1).values.mean():.1%} → {p_after.max(-1).values.mean():.1%} "
      f"(test accuracy {(p_before.argmax(-1) == yte_tf).float().mean():.1%})")
assert torch.equal(p_after.argmax(-1), p_before.argmax(-1))  # a temperature never changes a prediction
T_sst = fit_temperature(z_sel, y_sel)
p_sst = F.softmax(z_te, -1)
ece_sst = (expected_calibration_error(p_sst, y_te, ECE_BINS), expected_calibration_error(F.softmax(z_te / T_sst, -1), y_te, ECE_BINS))
print(f"MiniLM ({FREEZE_STEPS} steps, SST-2): T = {T_sst:.2f} fitted on {VAL_N} selection sentences; test ECE "
      f"{ece_sst[0]:.3f} → {ece_sst[1]:.3f}; mean confidence {p_sst.max(-1).values.mean():.1%}, selection accuracy "
      f"{(z_sel.argmax(-1) == y_sel).float().mean():.1%}, test accuracy {test_acc:.1%}")
fig, ax = plt.subplots(figsize=(4.5, 3))
for probs, y, name in ((p_before, yte_tf, "TF-IDF 未校準"), (p_after, yte_tf, f"TF-IDF 溫度縮放 T={T_tf:.2f}"),
                       (p_sst, y_te, "MiniLM 未校準")):
    b = reliability_bins(probs, y, ECE_BINS)
    ok = b["count"] > 0
    ax.plot(b["confidence"][ok], b["accuracy"][ok], "o-", ms=3, label=name)
ax.plot([0.5, 1], [0.5, 1], "k--", lw=1, label="完美校準")
ax.set(xlabel="平均信心", ylabel="準確率", title="可靠度圖(reliability diagram,測試集)")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# **錯誤分析(error analysis)**:模型最有把握卻答錯的句子,常常告訴我們資料或任務的問題(反諷、否定、標註本身可疑)。

# %%
conf_te = p_sst.max(-1).values
wrong = torch.nonzero(pred_te != y_te).flatten()
test_sentences = list(sst_val["sentence"])[VAL_N:VAL_N + TEST_N]
for k in wrong[conf_te[wrong].argsort(descending=True)][:5].tolist():
    print(f"label {y_te[k].item()}, predicted {pred_te[k].item()} with p={conf_te[k]:.2f}: {test_sentences[k][:90]}")

# %% [markdown]
# **推論最佳化(inference optimisation)。** 同一個模型、同一份測試集,比較:
#
# 1. 隨機順序的批次 vs 依長度排序的批次(padding 少);
# 2. PyTorch 動態 int8 量化(`quantize_dynamic`,只量化 `nn.Linear`);
# 3. 匯出 ONNX(`torch.onnx.export(..., dynamo=False)`)後用 ONNX Runtime 執行,以及 ORT 自己的動態 int8 量化。
#
# 每則的延遲(批次 1)與整個測試集的吞吐量都以「相對 PyTorch fp32」的倍數報告;輸出在容差內相同要用 `assert` 證明。

# %%
def timed(fn, repeat=1):
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


test_ids = Xv_sst[VAL_N:VAL_N + TEST_N]
perm = torch.randperm(len(test_ids), generator=torch.Generator().manual_seed(SEED)).tolist()
random_batches = [length_batches([test_ids[i] for i in perm[s:s + 128]], y_te[perm[s:s + 128]], 128)[0]
                  for s in range(0, len(perm), 128)]


def pad_share(batches):
    return 1 - sum(am.sum().item() for _, am, _ in batches) / sum(am.numel() for _, am, _ in batches)


_, t_random = timed(lambda: logits_of(clf, random_batches))
_, t_sorted = timed(lambda: logits_of(clf, test_batches))
print(f"whole test set, batch 128: random order {t_random:.2f} s ({pad_share(random_batches):.0%} padding), "
      f"sorted by length {t_sorted:.2f} s ({pad_share(test_batches):.0%} padding): {t_random / t_sorted:.1f}× faster")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clf_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(clf), {nn.Linear}, dtype=torch.qint8)
work = Path(tempfile.mkdtemp(prefix="ch12_"))


class TwoInputs(nn.Module):
    """forward(input_ids, attention_mask) only, so the ONNX graph has exactly these two inputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


onnx_path = work / "minilm_sst2.onnx"
ids0, am0, _ = test_batches[0]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(TwoInputs(clf), (ids0, am0), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "logits": {0: "batch"}})
quantize_dynamic(str(onnx_path), str(work / "minilm_sst2_int8.onnx"), weight_type=QuantType.QInt8)
opts = onnxruntime.SessionOptions()
opts.intra_op_num_threads = torch.get_num_threads()
sessions = {name: onnxruntime.InferenceSession(str(work / f), opts, providers=["CPUExecutionProvider"])
            for name, f in (("ONNX Runtime fp32", "minilm_sst2.onnx"), ("ONNX Runtime int8", "minilm_sst2_int8.onnx"))}


def ort_logits(sess, batches):
    return torch.cat([torch.from_numpy(sess.run(None, {"input_ids": ids.numpy(), "attention_mask": am.numpy()})[0])
                      for ids, am, _ in batches])


runners = {"PyTorch fp32": lambda bs: logits_of(clf, bs)[0], "PyTorch int8": lambda bs: logits_of(clf_int8, bs)[0],
           **{name: (lambda bs, s=sess: ort_logits(s, bs)) for name, sess in sessions.items()}}
single = [length_batches([test_ids[i]], y_te[i:i + 1], 1)[0] for i in perm[:20]]  # 20 sentences, one at a time
infer = {}
for name, run in runners.items():
    z, secs = timed(lambda: run(test_batches))
    _, secs1 = timed(lambda: run(single))
    infer[name] = dict(logits=z, acc=(z.argmax(-1) == y_te).float().mean().item(), throughput=len(y_te) / secs,
                       latency_ms=1000 * secs1 / len(single))
ref = infer["PyTorch fp32"]
rows = []
for name, r in infer.items():
    rows.append(dict(runtime=name, accuracy=r["acc"], delta_pt=100 * (r["acc"] - ref["acc"]), latency_ms=r["latency_ms"],
                     latency_speedup=ref["latency_ms"] / r["latency_ms"], per_second=r["throughput"],
                     throughput_speedup=r["throughput"] / ref["throughput"],
                     max_abs_diff=(r["logits"] - ref["logits"]).abs().max().item(),
                     same_argmax=(r["logits"].argmax(-1) == ref["logits"].argmax(-1)).float().mean().item()))
infer_table = pd.DataFrame(rows).set_index("runtime")
print(infer_table.round(4).to_string())
torch.testing.assert_close(infer["ONNX Runtime fp32"]["logits"], ref["logits"], atol=1e-4, rtol=1e-4)
for name in ("PyTorch int8", "ONNX Runtime int8"):
    # int8 kernels differ by CPU (AVX2 vs AVX-512 VNNI): 94-98 % agreement measured; this 16-step model has many
    # predictions near 0.5, so a few of them flip. The accuracy change (next line but one) is what must stay small.
    assert infer_table.loc[name, "same_argmax"] >= 0.90, name
    assert infer_table.loc[name, "max_abs_diff"] < 1.0, name
    assert abs(infer_table.loc[name, "delta_pt"]) <= 3.0, name

# %% [markdown]
# **校準的讀法。** 中文 TF-IDF + 邏輯迴歸本來就幾乎校準好了(ECE 0.009,擬合出的 T = 0.98):邏輯迴歸直接最小化
# 對數損失,機率自然可信。只訓練 16 步的 MiniLM 則**信心不足**(平均信心 64.7 %,測試準確率 70.0 %);但在 300 句
# 選擇集上擬合的 T = 0.45 讓測試集 ECE 從 0.062 變差成 0.081,因為選擇集上的準確率(76.7 %)比測試集高——校準集太小、
# 與測試分布不同時,溫度也會過擬合。12.5 在各約 2,000 則的中文驗證/測試集上,溫度縮放就明確改善了 ECE(有 `assert`)。
#
# **推論最佳化的讀法。** 依長度排序把 padding 從 52 % 降到 23 %,整個測試集的時間減少一半以上(本次 2.3 倍),而且結果完全不變,是最值得
# 先做的一步。ONNX Runtime fp32 的 logits 與 PyTorch 在 1e-4 內相同(`assert`);兩種 int8(PyTorch、ONNX Runtime)的預測與 fp32 一致的比例
# 是 94.3 % 與 97.7 %,準確率變化 −1.0 與 −0.3 點(300 句中的 3 句與 1 句,在雜訊之內)。一致的比例隨 CPU 的 int8 核心而變
# (不同 CPU 上會差幾個百分點),所以斷言只要求 90 % 以上,真正要守住的是準確率的變化。速度倍數見表
# (每次執行、每種 CPU 都不同):本次兩種 int8 的吞吐量(批次 128)都約快 2.2–2.4 倍;
# 單句延遲上 ONNX Runtime int8 最快,PyTorch int8 只快 1.3 倍。int8 的好處取決於硬體與批次大小,一定要在目標機器上量。

# %% [markdown]
# ## 12.5 綜合微調應用案例 · Case study: an end-to-end fine-tuning application
#
# 目標:一個讀中文評論、判斷正負面的分類器。all-MiniLM-L6-v2 不是起點:它的詞表只有 244 個中日韓字元,一則酒店評論
# 大半變成 `[UNK]`(下面量給你看)。所以在這裡自己建中文模型:
#
# 1. **詞表**:bert-base-chinese 的 WordPiece(21,128 個 token)分字,但只保留訓練文本中出現至少 `MIN_COUNT` 次的
#    token,並把 id 重新編號(remap)成緊湊的詞表;嵌入矩陣與 MLM 輸出層都因此小了約四倍;
# 2. **模型**:第 3 章的 BERT,縮小到 `ZH_LAYERS` 層 × `ZH_HIDDEN` 維;
# 3. **預訓練**:在**無標籤**文本(訓練集評論去掉標籤,加上《西遊記》)上做 MLM,損失只算被遮罩的位置;
# 4. **微調**:同一個模型,從預訓練權重 vs 從隨機初始化,各 3 個種子;加上 12.1 的 TF-IDF 基線;
# 5. 在 12.1.2 一開始就放到一邊的**測試集**上比較。

# %%
zh_tok = bert_chinese_tokenizer()
sample = texts[np.flatnonzero(source == 0)[0]]
minilm_tokens = tok.tokenize(sample)
print(f"MiniLM's WordPiece on a hotel review: {minilm_tokens.count('[UNK]')} of {len(minilm_tokens)} tokens are [UNK]")
t0 = time.perf_counter()
zh_ids = zh_tok(texts, add_special_tokens=False)["input_ids"]
novel = [line.strip() for line in load_zh_novel(NOVEL).split("\n") if line.strip()][:NOVEL_LINES]
novel_ids = [ids[s:s + MAX_CHARS - 2] for ids in zh_tok(novel, add_special_tokens=False)["input_ids"]
             for s in range(0, len(ids), MAX_CHARS - 2)]
kept = build_char_vocab([zh_ids[i] for i in tr_idx] + novel_ids, zh_tok, min_count=MIN_COUNT)
lookup = np.full(len(zh_tok), -1, dtype=np.int64)
lookup[kept] = np.arange(len(kept))
V = len(kept)


def to_compact(ids):
    return [2, *remap_ids(ids[:MAX_CHARS - 2], lookup), 3]  # [CLS] … [SEP], truncated to the window


zh_X = [to_compact(ids) for ids in zh_ids]
unk_rate = np.mean([x == 1 for i in te_idx for x in zh_X[i][1:-1]])
print(f"compact vocabulary: {V:,} of {len(zh_tok):,} tokens (5 specials + tokens seen ≥ {MIN_COUNT} times in "
      f"{len(tr_idx):,} training reviews + {len(novel_ids):,} novel chunks); [UNK] rate on the test reviews "
      f"{unk_rate:.2%}; {time.perf_counter() - t0:.1f} s")
assert [kept[c] for c in zh_X[tr_idx[0]] if c != 1] == [i for i in [zh_tok.cls_token_id, *zh_ids[tr_idx[0]][:MAX_CHARS - 2],
                                                                     zh_tok.sep_token_id] if lookup[i] != 1]

# %% [markdown]
# **MLM 預訓練。** 每步 `MLM_BATCH` 個長度相近的片段(訓練評論 + 小說),15 % 的 token 依 80/10/10 規則遮罩
# (第 3 章的 `mask_tokens`),MLM 頭只投影被遮罩的位置(`BertForMLM` 給了 labels 時就這麼做)。

# %%
zh_cfg = BertConfig(vocab_size=V, hidden_size=ZH_HIDDEN, num_layers=ZH_LAYERS, num_heads=ZH_HEADS,
                    intermediate_size=ZH_FFN, max_positions=MAX_CHARS)
helpers.seed_everything(SEED)
mlm = BertForMLM(zh_cfg).to(device)
mlm_corpus = [zh_X[i] for i in tr_idx] + [[2, *remap_ids(ids, lookup), 3] for ids in novel_ids]
mlm_batches = length_batches(mlm_corpus, torch.zeros(len(mlm_corpus)), MLM_BATCH, shuffle_seed=SEED)
g = torch.Generator().manual_seed(SEED)


def mlm_loss(model, batch):
    ids, am, _ = batch
    inputs, targets = mask_tokens(ids, 4, V, special_ids=(0, 1, 2, 3, 4), generator=g)
    if not (targets != -100).any():
        targets[0, 1] = ids[0, 1]
    return model(inputs.to(device), am.to(device), targets.to(device))[1]


opt = torch.optim.AdamW(mlm.parameters(), lr=MLM_LR, weight_decay=0.01)
sched = make_scheduler(opt, "cosine", total_steps=MLM_STEPS, warmup_steps=MLM_STEPS // 10)
mlm_hist = helpers.fit(mlm, mlm_batches, mlm_loss, opt, steps=MLM_STEPS, scheduler=sched, grad_clip=1.0, desc="MLM")
print(f"MLM: {MLM_STEPS} steps × {MLM_BATCH} chunks from {len(mlm_corpus):,} ({mlm_hist['seconds'][0]:.0f} s); loss "
      f"{np.mean(mlm_hist['loss'][:10]):.2f} (first 10 steps) → {np.mean(mlm_hist['loss'][-10:]):.2f} (last 10); "
      f"uniform guessing would be ln {V:,} = {math.log(V):.2f}")
assert np.mean(mlm_hist["loss"][-10:]) < np.mean(mlm_hist["loss"][:10]) - 1.0
freq = np.bincount([c for x in mlm_corpus for c in x if c > 4], minlength=V)[5:]
freq = freq[freq > 0] / freq.sum()
unigram_entropy = float(-(freq * np.log(freq)).sum())
print(f"entropy of the character frequencies (a model that ignores the context): {unigram_entropy:.2f} nats")

# %% [markdown]
# **微調:預訓練 vs 從零開始。** 兩者的架構、批次、步數完全相同,唯一差別是編碼器的初始權重。學習率對兩種起點的影響
# 不同(預訓練過的權重通常要較小的學習率),所以公平的比較是讓每種起點各自在**驗證集**上(種子 0)從 `FT_LRS` 挑學習率,
# 再用它跑 3 個種子;測試集不參與任何選擇。

# %%
zh_train = length_batches([zh_X[i] for i in tr_idx], torch.tensor(labels[tr_idx]), FT_BATCH, shuffle_seed=SEED)
zh_val = length_batches([zh_X[i] for i in va_idx], torch.tensor(labels[va_idx]), 256)
zh_test = length_batches([zh_X[i] for i in te_idx], torch.tensor(labels[te_idx]), 256)


def zh_loss(model, batch):
    ids, am, y = (t.to(device) for t in batch)
    return F.cross_entropy(model(ids, am), y)


def finetune_zh(pretrained, seed, lr):
    helpers.seed_everything(seed)
    encoder = copy.deepcopy(mlm.bert) if pretrained else Bert(zh_cfg)
    model = BertClassifier(encoder, num_labels=2, pooling="mean").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = make_scheduler(opt, "linear", total_steps=FT_STEPS, warmup_steps=FT_STEPS // 10)
    order = torch.randperm(len(zh_train), generator=torch.Generator().manual_seed(seed)).tolist()
    hist = helpers.fit(model, [zh_train[k] for k in order], zh_loss, opt, steps=FT_STEPS, scheduler=sched,
                       grad_clip=1.0, progress=False)
    return model, hist["seconds"][0]


def run_zh(pretrained, seed, lr):
    model, secs = finetune_zh(pretrained, seed, lr)
    zv, yv = logits_of(model, zh_val)
    return dict(model=model, seconds=secs, lr=lr, val=(zv.argmax(-1) == yv).float().mean().item())


kinds = {"pretrained (MLM)": True, "from scratch": False}
grid = {(k, lr): run_zh(p, SEEDS[0], lr) for k, p in kinds.items() for lr in FT_LRS}  # learning rate on validation
best_lr = {k: max(FT_LRS, key=lambda lr: grid[k, lr]["val"]) for k in kinds}
print("validation accuracy, seed", SEEDS[0], "|", " | ".join(
    f"{k}: " + ", ".join(f"lr {lr:g} {grid[k, lr]['val']:.1%}" for lr in FT_LRS) for k in kinds))
zh_runs = {k: [grid[k, best_lr[k]]] + [run_zh(p, s, best_lr[k]) for s in tqdm(SEEDS[1:], desc=k)]
           for k, p in kinds.items()}
for r in (r for runs in zh_runs.values() for r in runs):
    zt, yt = logits_of(r["model"], zh_test)
    r["test"] = (zt.argmax(-1) == yt).float().mean().item()
tfidf_test = tfidf.score(X_te, labels[te_idx])
zh_majority = max(labels[te_idx].mean(), 1 - labels[te_idx].mean())
summary_rows = {k: dict(test_mean=np.mean([r["test"] for r in v]), test_sd=np.std([r["test"] for r in v]),
                        val_mean=np.mean([r["val"] for r in v]), seconds=np.mean([r["seconds"] for r in v]))
                for k, v in zh_runs.items()}
summary_rows["TF-IDF + LR"] = dict(test_mean=tfidf_test, test_sd=0.0, val_mean=tfidf_val, seconds=tfidf_s)
zh_table = pd.DataFrame(summary_rows).T
print(f"test set: {len(te_idx):,} reviews, majority class {zh_majority:.1%}; {len(SEEDS)} seeds for the BERTs at "
      f"their learning rates {best_lr}")
print(zh_table.round(4).to_string())
gain = zh_table.loc["pretrained (MLM)", "test_mean"] - zh_table.loc["from scratch", "test_mean"]
print(f"pretraining vs scratch: {gain * 100:+.1f} points (seed sd {zh_table.loc['pretrained (MLM)', 'test_sd'] * 100:.1f} / "
      f"{zh_table.loc['from scratch', 'test_sd'] * 100:.1f}); best BERT vs TF-IDF: "
      f"{(zh_table.loc[['pretrained (MLM)', 'from scratch'], 'test_mean'].max() - tfidf_test) * 100:+.1f} points")
best_bert = zh_table.loc[["pretrained (MLM)", "from scratch"], "test_mean"].idxmax()
assert zh_table.loc[best_bert, "test_mean"] > zh_majority + 0.1
assert tfidf_test > zh_table.loc[best_bert, "test_mean"] + 0.05  # at this CPU budget the classical baseline wins

# %% [markdown]
# **誠實的結論:在這個 CPU 預算下,TF-IDF 贏,而且贏很多;這麼短的 MLM 預訓練也沒有幫上忙。**
#
# - MLM 120 步後損失 6.36,幾乎等於字元頻率的熵 6.45 nats:模型只學到「哪些字常見」,還沒學到任何上下文——這是
#   MLM 訓練最早的階段,要走出去需要數千步以上;
# - 學習率很關鍵:從這樣的權重出發、用 1e-3 微調時,驗證準確率 47.2 %,正是驗證集中正面評論的比例——模型把每則評論
#   都判成正面;換成 3e-4 才到 65.8 %。從零開始的模型相反,1e-3(71.5 %)比 3e-4(62.5 %)好。只用一個學習率比較
#   兩種起點,結論會被這個差異左右;
# - 各用自己的學習率跑 3 個種子:預訓練 59.1 % ± 5.6 %,從零 71.2 % ± 3.9 %,差 12.1 點,大於種子間的差異:
#   **這麼短的預訓練沒有幫助,反而較差**。可能的原因是它還停在只學字頻的階段,表示(representation)對分類沒有用,
#   卻比隨機初始化更難調動;這是推測,本章沒有量測;
# - 字元 1–3-gram TF-IDF + 邏輯迴歸幾秒(本次約 3 秒)就到 89.1 %,比最好的 BERT 高約 18 點。
#
# 在 GPU 上會怎麼改變?關鍵不是把這個小模型訓練久一點,而是**換起點**:從在大量中文語料上預訓練好的 bert-base-chinese
# (或更大的中文模型)開始微調,把 `MAX_CHARS` 提高到 256、訓練數個 epoch——那樣的模型才有機會超越 TF-IDF。
# 下面仍把驗證集上最好的 BERT 存檔,因為本章要示範的是**交付流程**:存檔、載入檢查、校準、批次推論、錯誤處理;
# 換成更好的模型時,這些程式一行都不用改。

# %% [markdown]
# **存檔與載入。** 在所有 BERT 執行中取**驗證**準確率最好的一個,在**驗證集**上擬合溫度,連同緊湊詞表與分詞器一起存進
# `default_model_dir()`(資料快取下,不進 git;`model.pt` 以暫存檔 + `os.replace` 原子寫入,以 `weights_only=True` 讀回)。
# 重新載入後的 `predict` 必須與記憶體中的模型給出相同的機率;設定與程式不符的存檔要被拒絕。

# %%
best_run = max((r for runs in zh_runs.values() for r in runs), key=lambda r: r["val"])
best_zh = best_run["model"].eval()
best_kind = next(k for k, runs in zh_runs.items() if any(r is best_run for r in runs))
zv, yv = logits_of(best_zh, zh_val)
T_zh = fit_temperature(zv, yv)
zt, yt = logits_of(best_zh, zh_test)
ece_before, ece_after = (expected_calibration_error(F.softmax(zt / t, -1), yt, ECE_BINS) for t in (1.0, T_zh))
assert ece_after < ece_before  # temperature scaling, fitted on validation, improves the test calibration
model_dir = save_review_classifier(default_model_dir(), best_zh.cpu(), zh_tok, kept, labels=("負面", "正面"),
                                   temperature=T_zh, window=MAX_CHARS)
loaded = load_review_classifier(model_dir)
one_window = [i for i in te_idx if len(zh_ids[i]) <= MAX_CHARS - 2][:200]  # longer reviews are chunked by predict
p_loaded, _ = loaded.probabilities([texts[i] for i in one_window])
ids_c, am_c, order_c = length_batches([zh_X[i] for i in one_window], torch.arange(len(one_window)), len(one_window))[0]
with torch.no_grad():
    p_mem = F.softmax(best_zh(ids_c, am_c).double() / T_zh, -1)
np.testing.assert_allclose(p_loaded[order_c.numpy()], p_mem.numpy(), atol=1e-5)
print(f"saved the {best_kind} model (validation {best_run['val']:.1%}, test {best_run['test']:.1%}) to {model_dir} ({(model_dir / 'model.pt').stat().st_size / 1e6:.1f} MB); T = {T_zh:.2f}, test ECE "
      f"{ece_before:.3f} → {ece_after:.3f}; reloaded predictions equal the in-memory model on {len(one_window)} test reviews")

bad_dir = work / "mismatched"
save_review_classifier(bad_dir, copy.deepcopy(best_zh), zh_tok, kept, temperature=T_zh, window=MAX_CHARS)
ck = helpers.load_checkpoint(bad_dir / "model.pt")
ck["meta"]["config"]["num_layers"] = ZH_LAYERS + 1  # a config that does not match the saved weights
helpers.save_checkpoint(bad_dir / "model.pt", **ck)
try:
    load_review_classifier(bad_dir)
    raise AssertionError("a mismatched model was loaded")
except ValueError as e:
    print("refused:", str(e)[:160], "…")

# %% [markdown]
# **使用它。** `predict(texts)` 回傳每則評論的標籤、機率與用了幾個視窗:超過視窗(`MAX_CHARS` 個 token)的長評論切成
# 連續的片段分別分類,再平均機率。空清單、非字串、空字串都給出說明清楚的錯誤。

# %%
examples = ["这家酒店很干净，服务也热情，下次还来。", "房间又小又吵，空调还坏了，不会再住。", "送餐太慢了，菜都凉了",
            "味道不错，分量足，配送也快", "這家酒店很乾淨"]
long_review = max((texts[i] for i in te_idx), key=len)
for t, r in zip(examples + [long_review], predict(examples + [long_review])):
    print(f"{r['label']}  p={r['prob']:.3f}  chunks={r['chunks']}  {t[:30]}{'…' if len(t) > 30 else ''} ({len(t)} chars)")
trad = loaded.encode("這家酒店很乾淨")[0]
print(f"'這家酒店很乾淨' (traditional characters): {sum(c == 1 for c in trad)} of {len(trad) - 2} characters are [UNK] "
      f"for a model trained on simplified-Chinese reviews")
for bad in ([], ["ok", 3], [""]):
    try:
        predict(bad)
    except (ValueError, TypeError) as e:
        print(f"predict({bad!r}) → {type(e).__name__}: {e}")

# %% [markdown]
# 命令列(command line):`python -m helpers.finetune "評論"` 載入同一個存檔,印出標籤與機率。

# %%
repo = Path(helpers.__file__).resolve().parents[1]
env = dict(os.environ, PYTHONPATH=str(repo))
cli = subprocess.run([sys.executable, "-m", "helpers.finetune", "这家酒店很干净", "送餐太慢了"], cwd=repo, env=env,
                     capture_output=True, text=True, timeout=120)
print(cli.stdout.strip() or cli.stderr[-500:])
assert cli.returncode == 0 and len(cli.stdout.strip().splitlines()) == 2

# %% [markdown]
# 互動小工具(`ipywidgets`):在 Jupyter 裡輸入評論、按按鈕即可分類。顯示它不會卡住執行;下面先以程式按一次按鈕。

# %%
box_in = ipywidgets.Textarea(value="服务态度很好，房间也很干净", description="評論", layout=ipywidgets.Layout(width="60%"))
box_btn = ipywidgets.Button(description="分類")
box_out = ipywidgets.Output()


def on_click(_):
    box_out.clear_output()
    with box_out:
        try:
            r = predict([box_in.value])[0]
            print(f"{r['label']}(機率 {r['prob']:.2f},{r['chunks']} 個視窗)")
        except (ValueError, TypeError) as e:
            print(f"輸入有誤:{e}")


box_btn.on_click(on_click)
display(ipywidgets.VBox([box_in, box_btn, box_out]))
on_click(None)
print(predict([box_in.value])[0])

# %% [markdown]
# ## 12.6 本章小結 · Summary
#
# 本章把微調做成一套可以照抄的流程,每一步都量了:
#
# - **資料**:19,753 則中文評論(酒店 + 外賣)清洗、去重後剩 19,725 則;MinHash 找到 16 對近似重複,其中 3 對標籤
#   相反——標籤雜訊的直接證據。依(來源, 標籤)分層切成 15,780 / 1,973 / 1,972,三份的正面比例與酒店比例一致。
# - **外洩**:先增強再切分,測試分數被灌高 12.6 點(98.7 % vs 86.2 %,3 個種子),而兩個模型真正的驗證準確率一樣。
# - **增強**:300 則的小資料上 EDA 與字元雜訊各多 2 點多,但與種子差異同量級。
# - **凍結**(MiniLM,16 步):全部解凍 76.7 % > 解凍上兩層 67.7 % > 只訓練分類頭 60.0 %;為長訓練設計的逐步解凍與
#   分層學習率在極短預算下沒有優勢。
# - **搜尋**:凍結特徵上 12 次隨機搜尋只要幾秒;最佳試驗選擇集 81.7 %、測試集 75.0 %,學習率是最敏感的超參數。
# - **評估與推論**:MiniLM 測試準確率 70.0 %、macro-F1 0.693;依長度排序把 padding 從 52 % 降到 23 %,時間減少一半以上;int8 與 ONNX Runtime 的輸出在容差內
#   與 fp32 一致(`assert`)。溫度縮放在中文 BERT 上把測試 ECE 從 0.054 降到 0.034(`assert`)。
# - **中文分類器**:TF-IDF 89.1 % 勝過本章在 CPU 上能訓練的字元 BERT(從零 71.2 %;短暫 MLM 預訓練後、各自挑好學習率,59.1 %);
#   存下的分類器有 `predict()`、長文切窗、輸入檢查、拒絕不符的存檔、命令列與互動小工具。

# %%
pre, scr = zh_table.loc["pretrained (MLM)"], zh_table.loc["from scratch"]
print(f"""What we built and measured:
- data: {len(texts0):,} → {len(texts):,} reviews after cleaning and (near-)dedup; split {len(tr_idx):,}/{len(va_idx):,}/{len(te_idx):,}
- leakage: test score inflated by {inflation * 100:.1f} points ({len(SEEDS)} seeds)
- augmentation on {AUG_N} reviews: {', '.join(f'{k} {np.mean(v):.1%}' for k, v in aug_acc.items())}
- freezing (MiniLM, SST-2, {FREEZE_STEPS} steps): {', '.join(f'{s} {r["acc"]:.1%}/{r["seconds"]:.0f} s' for s, r in freeze.items())}
- random search: {SEARCH_TRIALS} trials in {search_s:.1f} s, best {best_trial['acc']:.1%} (selection), {search_test:.1%} (test)
- evaluation ({best_name}): test accuracy {test_acc:.1%}, macro-F1 {macro_f1:.3f}, MiniLM ECE {ece_sst[0]:.3f} → {ece_sst[1]:.3f}
- calibration: Chinese TF-IDF + LR ECE {ece_tf[0]:.3f} → {ece_tf[1]:.3f} (T = {T_tf:.2f}); Chinese BERT ECE {ece_before:.3f} → {ece_after:.3f} (T = {T_zh:.2f})
- inference: length sorting {t_random / t_sorted:.1f}×; int8 torch {infer_table.loc['PyTorch int8', 'throughput_speedup']:.1f}×, ORT fp32 {infer_table.loc['ONNX Runtime fp32', 'throughput_speedup']:.1f}×, ORT int8 {infer_table.loc['ONNX Runtime int8', 'throughput_speedup']:.1f}× throughput
- Chinese classifier (test {len(te_idx):,}): pretrained {pre['test_mean']:.1%} ± {pre['test_sd']:.1%}, scratch {scr['test_mean']:.1%} ± {scr['test_sd']:.1%}, TF-IDF {tfidf_test:.1%}""")

# %%
helpers.report(12, zh_saved_test_acc=best_run["test"], zh_pretrained_test_acc=pre["test_mean"],
               zh_scratch_test_acc=scr["test_mean"],
               zh_tfidf_test_acc=tfidf_test, leakage_inflation=inflation, ece_before=ece_before, ece_after=ece_after,
               sst_test_acc=test_acc, sst_macro_f1=macro_f1, ort_int8_speedup=infer_table.loc["ONNX Runtime int8", "throughput_speedup"])

# %% [markdown]
# ## 12.7 思考題 · Exercises
#
# **1.** 只依標籤分層(不管來源)時,三份資料中酒店評論的比例還一樣嗎?差多少?

# %% tags=["answer"]
parts = stratified_split(labels.tolist(), SPLIT, seed=SEED)
shares = [(source[ix] == 0).mean() for ix in parts]
print("hotel share per split, stratified by label only:", [f"{s:.2%}" for s in shares],
      f"(by source and label: {split_table['hotel share'].round(4).tolist()})")
print("Stratifying by label alone keeps the positive rate equal but lets the hotel share drift by chance; stratifying "
      "by (source, label) pins both, which matters when the two sources differ as much as here.")

# %% [markdown]
# **2.** 溫度縮放會改變準確率嗎?如果把 T 改在**測試集**上擬合,ECE 會更低嗎?為什麼不該這樣做?

# %% tags=["answer"]
T_cheat = fit_temperature(zte_tf, yte_tf)
ece_cheat = expected_calibration_error(F.softmax(zte_tf / T_cheat, -1), yte_tf, ECE_BINS)
print(f"TF-IDF + LR: T fitted on validation {T_tf:.2f} → test ECE {ece_tf[1]:.3f}; fitted on the test set itself "
      f"{T_cheat:.2f} → {ece_cheat:.3f}; predictions unchanged: "
      f"{torch.equal((zte_tf / T_cheat).argmax(-1), zte_tf.argmax(-1))}")
print(f"Fitting on the test set gives test ECE {ece_cheat:.3f} instead of {ece_tf[1]:.3f}, but that number no longer "
      "estimates the calibration on new data: it is the leakage of 12.1.2 again, in a single parameter.")

# %% [markdown]
# **3.** (動手改)把分類器的視窗縮小成一半(`window=MAX_CHARS // 2`),長評論要切成幾個視窗?酒店測試評論的準確率變多少?

# %% tags=["answer"]
half = ReviewClassifier(loaded.model, loaded.tokenizer, kept, loaded.labels, loaded.temperature, window=MAX_CHARS // 2)
hotel_test = [i for i in te_idx if source[i] == 0]
window_acc = {}
for name, m in ((f"window {MAX_CHARS}", loaded), (f"window {MAX_CHARS // 2}", half)):
    p, n_chunks = m.probabilities([texts[i] for i in hotel_test])
    window_acc[name] = (p.argmax(1) == labels[hotel_test]).mean()
    print(f"{name}: hotel test accuracy {window_acc[name]:.1%}, mean chunks per review {np.mean(n_chunks):.2f}")
better = max(window_acc, key=window_acc.get)
print(f"A smaller window cuts each long hotel review into about twice as many pieces, each seeing less context; "
      f"here the {better} classifier is {abs(np.subtract(*window_acc.values())):.1%} more accurate.")
