"""Source of notebooks/05_peft.ipynb (percent format). Build: python scripts/nbsrc/build.py scripts/nbsrc/05_peft.py"""
# %% [markdown]
# # 第 5 章 高階微調策略:Adapter Tuning 與P-Tuning · Advanced fine-tuning: Adapter tuning and P-tuning
#
# 全參數微調(full fine-tuning)要為每個任務存一整份模型。參數高效微調(parameter-efficient fine-tuning, PEFT)
# 只訓練一小部分新加的或挑出的參數,其餘凍結。本章在第 3 章的 all-MiniLM-L6-v2(平均池化分類頭,SST-2 情感分類)
# 上親手寫出四種方法,並逐一用 `assert` 證明它們與 🤗 `peft` 的實作相同:
#
# 1. **Adapter**(Houlsby 瓶頸轉接層):初始化時模型輸出不變;
# 2. **LoRA**(低秩適配):參數數量、logits 與 `peft` 相同,訓練後合併回權重,推論沒有額外延遲;
# 3. **Prompt tuning** 與 **P-tuning**:在輸入前加上可訓練的虛擬 token(virtual tokens),與 `peft` 的位置和輸出相同;
# 4. 組合方法、長文本(IMDB)分類,以及一張在**相同樣本、相同步數**下比較所有方法的表。
#
# 全部在 2 核 CPU 上約兩到三分鐘跑完;設定格註明在 GPU 上該調高的數值。

# %%
import copy
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import peft
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from torch import nn
from transformers import AutoTokenizer

import helpers
from helpers.bert import BertClassifier, from_pretrained, mean_pool
from helpers.data import length_batches, load_imdb, load_sst2, minilm_path
from helpers.optim import make_scheduler
from helpers.peft import (
    Adapter,
    LoRALinear,
    PromptClassifier,
    PromptEncoder,
    SoftPrompt,
    add_adapters,
    add_lora,
    load_trainable,
    merge_lora,
    save_trainable,
    to_hf_classifier,
    trainable_only,
)

helpers.set_style()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside peft, not our code
device = helpers.get_device()
print(f"torch {torch.__version__}, peft {peft.__version__}, device {device}, {torch.get_num_threads()} threads, "
      f"native bf16: {helpers.bf16_fast(device)}")

# %% [markdown]
# **設定 · Configuration.** 為 2 核 CPU 設定;精度依硬體能力選(上面印出的 `native bf16`):有原生 bf16(例如 AVX-512 BF16)
# 時訓練與評估在 bf16 autocast 下執行,否則用 float32;本次執行是 bf16。每種方法都用**同一批** SST-2 句子、
# **同樣的** `STEPS` 步訓練(每步 32 句,依長度分桶);驗證集取固定的前 `VAL_N` 句(依原順序)。步數很少,準確率
# 因此低於充分訓練的數字;註解寫出在 GPU 上可以調高的數值。

# %%
SEED = 0
AMP = helpers.bf16_fast(device)  # bf16 autocast only with native bf16 hardware; LLMBOOK_BF16=0/1 overrides
MAX_LEN, BATCH = 64, 32
STEPS = 26  # optimizer steps per method = 832 SST-2 sentences; GPU: 2_000 (all 67k sentences, 1 epoch)
VAL_N = 300  # the first 300 SST-2 validation sentences are evaluated; GPU: 872 (all)
LR_FULL, LR_PEFT, LR_PROMPT, LR_PTUNE = 2e-4, 2e-3, 3e-2, 1e-2  # full FT / LoRA, adapters / prompts / P-tuning (high: few steps)
LORA_R, LORA_ALPHA, LORA_DROPOUT = 8, 16, 0.05
RANKS = (1, 4, 8, 16)
RANK_STEPS = 10  # the rank sweep trains each rank this many steps; GPU: 2_000
ADAPTER_DIM = 64  # Houlsby bottleneck width
N_VIRTUAL = 10  # virtual tokens for prompt tuning and P-tuning; GPU: 20
PTUNE_HIDDEN = 128  # P-tuning MLP width
IMDB_TRAIN, IMDB_TEST = 4000, 80  # TF-IDF trains on the first 4,000 reviews; both are tested on 80 held-out; GPU: 1000
WINDOW = 128  # tokens per window for long reviews ([CLS] + 126 + [SEP])

# %% [markdown]
# 先準備共用的東西:分詞器、預訓練 MiniLM(只載入一次,每種方法複製一份)、依長度分桶的訓練批次(第 3 章的
# `length_batches`,已移到 `helpers.data`),以及訓練與評估函式。所有方法共用 `train()`:AdamW、10 % 預熱
# (warm-up)後線性衰減、梯度裁剪,只把 `requires_grad=True` 的參數交給最佳化器。

# %%
tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
minilm = from_pretrained()
sst = load_sst2()
train_ds = sst["train"].shuffle(seed=SEED).select(range(STEPS * BATCH))
val_ds = sst["validation"].select(range(VAL_N))


def encode(texts, max_len=MAX_LEN):
    return tok(list(texts), truncation=True, max_length=max_len)["input_ids"]


Xtr, ytr = encode(train_ds["sentence"]), torch.tensor(train_ds["label"])
Xva, yva = encode(val_ds["sentence"]), torch.tensor(val_ds["label"])
train_batches = length_batches(Xtr, ytr, BATCH, shuffle_seed=SEED)
val_batches = length_batches(Xva, yva, 128)
majority = max(yva.float().mean().item(), 1 - yva.float().mean().item())
ids0, am0 = (t.to(device) for t in val_batches[-1][:2])  # one fixed batch for the equality checks
print(f"{len(train_batches)} training batches of {BATCH} ({len(Xtr):,} sentences, mean {np.mean([len(x) for x in Xtr]):.1f} "
      f"tokens); validation {len(Xva)} sentences, majority class {majority:.1%}")

# %%
def new_classifier(seed=SEED):
    """A fresh MiniLM + mean-pool head (head seeded), word embeddings frozen."""
    helpers.seed_everything(seed)
    clf = BertClassifier(copy.deepcopy(minilm), num_labels=2, pooling="mean").to(device)
    clf.bert.embeddings.word.weight.requires_grad_(False)
    return clf


def cls_loss(model, batch):
    ids, am, y = (t.to(device) for t in batch)
    return F.cross_entropy(model(ids, am).float(), y)


@torch.no_grad()
def accuracy(model, batches=val_batches):
    model.eval()
    hits = total = 0
    for ids, am, y in batches:
        with helpers.autocast(device, enabled=AMP):
            hits += (model(ids.to(device), am.to(device)).argmax(-1).cpu() == y).sum().item()
        total += len(y)
    return hits / total


def train(model, lrs, steps=STEPS, batches=None, desc="train", seed=SEED):
    """AdamW on the trainable parameters; ``lrs``: {name fragment: lr}, first match wins ('' matches all)."""
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = next(lr for frag, lr in lrs.items() if frag in name)
            groups.setdefault(lr, []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": lr} for lr, ps in groups.items()], weight_decay=0.0)
    sched = make_scheduler(opt, "linear", total_steps=steps, warmup_steps=max(1, steps // 10))
    torch.manual_seed(seed)  # dropout
    return helpers.fit(model, batches or train_batches[:steps], cls_loss, opt, steps=steps, scheduler=sched,
                       grad_clip=1.0, autocast=AMP, desc=desc)


CKPT = Path(tempfile.mkdtemp(prefix="ch05_"))
results = {}


def record(name, model, hist):
    """Accuracy, trainable parameters and their share, training seconds, size of what must be saved."""
    acc, n = accuracy(model), helpers.count_parameters(model, trainable_only=True)
    kb = save_trainable(model, CKPT / f"{name}.safetensors").stat().st_size / 1024
    results[name] = dict(acc=acc, trainable=n, share=n / helpers.count_parameters(model),
                         seconds=hist["seconds"][0], kb=kb)
    print(f"{name}: validation accuracy {acc:.1%}, {n:,} trainable ({results[name]['share']:.2%}), "
          f"{hist['seconds'][0]:.0f} s, checkpoint {kb:,.0f} KB")

# %% [markdown]
# **參考列:全參數微調(full fine-tuning)。** 除了凍結的詞嵌入(word embeddings),所有權重都訓練。

# %%
full = new_classifier()
hist_full = train(full, {"": LR_FULL}, desc="full fine-tuning")
record("full FT", full, hist_full)
assert results["full FT"]["acc"] > majority + 0.1

# %% [markdown]
# ## 5.1 Adapter Tuning 的實現 · Implementing Adapter tuning
#
# Houlsby 等人(2019)的轉接層(adapter)是一個小瓶頸網路:降維投影(down-project)、非線性、升維投影(up-project),
# 再加上殘差連接(residual)。它插在每層注意力輸出投影(`out_proj`)與前饋輸出投影(`fc2`)之後、殘差與 LayerNorm
# 之前。升維投影初始化為 0,所以一開始每個 adapter 都是恆等函數,預訓練模型的行為完全不變。

# %%
class MyAdapter(nn.Module):
    def __init__(self, d_model, bottleneck):
        super().__init__()
        self.down, self.up = nn.Linear(d_model, bottleneck), nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.up.weight)  # starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(F.gelu(self.down(x)))


torch.manual_seed(SEED)
mine, theirs = MyAdapter(384, ADAPTER_DIM), Adapter(384, ADAPTER_DIM)
theirs.load_state_dict(mine.state_dict())
nn.init.normal_(mine.up.weight, std=0.1)  # a non-zero up-projection, so the check is not trivial
theirs.up.weight.data.copy_(mine.up.weight.data)
x = torch.randn(2, 5, 384)
torch.testing.assert_close(mine(x), theirs(x))
print("MyAdapter == helpers.peft.Adapter")

# %% [markdown]
# 用 `helpers.peft.add_adapters` 把每個 `out_proj` 與 `fc2` 換成 `Sequential(linear, Adapter)`。**初始化時輸出不變**
# (斷言):

# %%
adapter = new_classifier()
with torch.no_grad():
    before = adapter.eval()(ids0, am0)
    names = add_adapters(adapter, ADAPTER_DIM)
    after = adapter(ids0, am0)
torch.testing.assert_close(after, before)
print(f"{len(names)} adapters inserted; max |Δlogits| at init = {(after - before).abs().max():.1e}")

# %% [markdown]
# 哪些參數訓練?只有 adapter、所有 LayerNorm 與分類頭。按名稱過濾時要小心:`".1."` 也會匹配第 1 層的所有權重,
# 所以用 `"out_proj.1."` / `"fc2.1."`。

# %%
def adapter_keep(name):
    return "out_proj.1." in name or "fc2.1." in name or ".norm." in name or name.startswith("head.")


trainable_only(adapter, adapter_keep)
kinds = {}
for name, p in adapter.named_parameters():
    if p.requires_grad:
        kind = "adapters" if "out_proj.1." in name or "fc2.1." in name else "LayerNorms" if "norm" in name else "head"
        kinds[kind] = kinds.get(kind, 0) + p.numel()
print({k: f"{v:,}" for k, v in kinds.items()}, f"total {sum(kinds.values()):,}")
assert all(adapter_keep(n) for n, p in adapter.named_parameters() if p.requires_grad)

# %%
hist_adapter = train(adapter, {"": LR_PEFT}, desc="adapters")
record("adapter", adapter, hist_adapter)

# %% [markdown]
# ## 5.2 LoRA Tuning 實現 · Implementing LoRA tuning
#
# LoRA(low-rank adaptation,Hu 等人 2021)凍結權重 $W$,只學一個低秩更新:$h = Wx + \frac{\alpha}{r} B A x$,其中
# $A \in \mathbb{R}^{r\times d_{in}}$ 隨機初始化、$B \in \mathbb{R}^{d_{out}\times r}$ 初始化為 0(所以一開始不改變模型),
# $r \ll d$。我們把它加在注意力的 query 與 value 投影上。

# %%
fig, ax = plt.subplots(figsize=(5, 2.4))
for (x0, y0, w, h, label, color) in [(0.0, 0.2, 0.9, 0.6, "W (凍結)\n384×384", "#cccccc"),
                                     (1.3, 0.55, 0.5, 0.3, "A: r×384\n(隨機)", "#9ecae1"),
                                     (2.1, 0.55, 0.5, 0.3, "B: 384×r\n(0 起始)", "#fdae6b")]:
    ax.add_patch(plt.Rectangle((x0, y0), w, h, color=color))
    ax.text(x0 + w / 2, y0 + h / 2, label, ha="center", va="center", fontsize=8)
ax.annotate("", (1.3, 0.7), (0.95, 0.5), arrowprops=dict(arrowstyle="->"))
ax.text(1.55, 0.3, "h = Wx + (α/r)·BAx", ha="center", fontsize=9)
ax.text(-0.1, 0.5, "x", fontsize=11)
ax.set(xlim=(-0.2, 2.8), ylim=(0, 1), title="LoRALinear:凍結的 W 加上低秩旁路 BA")
ax.axis("off")
plt.show()

# %%
class MyLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r, alpha, dropout=0.0):
        super().__init__()
        self.base, self.scale, self.drop = base, alpha / r, nn.Dropout(dropout)
        base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * self.drop(x) @ self.lora_A.T @ self.lora_B.T


torch.manual_seed(SEED)
lin = nn.Linear(384, 384)
mine, theirs = MyLoRALinear(lin, LORA_R, LORA_ALPHA), LoRALinear(lin, LORA_R, LORA_ALPHA)
theirs.lora_A.data.copy_(mine.lora_A.data)
nn.init.normal_(mine.lora_B)
theirs.lora_B.data.copy_(mine.lora_B.data)
x = torch.randn(2, 5, 384)
torch.testing.assert_close(mine(x), theirs(x))
print("MyLoRALinear == helpers.peft.LoRALinear")

# %% [markdown]
# 壞參數會得到清楚的錯誤:$r \le 0$、不存在的目標模組名稱,或包裝一個不是 `nn.Linear` 的模組。

# %%
# NBVAL_CHECK_OUTPUT
for bad in (lambda: LoRALinear(nn.Linear(4, 4), r=0), lambda: add_lora(copy.deepcopy(full), targets=["query"]),
            lambda: LoRALinear(nn.LayerNorm(4))):
    try:
        bad()
    except (ValueError, TypeError) as e:
        print(f"{type(e).__name__}: {e}")

# %% [markdown]
# **證明 (a)(b):與 `peft` 相同。** `helpers.peft.to_hf_classifier` 把同樣的權重放進 `transformers` 的
# `BertForSequenceClassification`(forward 改成同樣的平均池化),再用 `peft.LoraConfig` 包起來。可訓練參數數量要相等;
# 把我們的 A、B(B 先設成隨機值,否則比較沒有意義)複製進 `peft` 模型後,logits 要相等。

# %%
base = new_classifier()
hf = to_hf_classifier(base)
lora = copy.deepcopy(base)
add_lora(lora, LORA_R, LORA_ALPHA, targets=("q_proj", "v_proj"), dropout=LORA_DROPOUT)
n_lora = trainable_only(lora, lambda n: "lora_" in n or n.startswith("head."))
pm_lora = peft.get_peft_model(hf, peft.LoraConfig(task_type="SEQ_CLS", r=LORA_R, lora_alpha=LORA_ALPHA,
                                                  lora_dropout=LORA_DROPOUT, target_modules=["query", "value"]))
n_peft, n_all = pm_lora.get_nb_trainable_parameters()
print(f"ours: {n_lora:,} trainable;  peft: {n_peft:,} trainable of {n_all:,} ({n_peft / n_all:.2%})")
assert n_lora == n_peft

probe = copy.deepcopy(lora)
for i, blk in enumerate(probe.bert.blocks):
    for ours, name in (("q_proj", "query"), ("v_proj", "value")):
        src, dst = getattr(blk.self_attn, ours), getattr(pm_lora.base_model.model.bert.encoder.layer[i].attention.self, name)
        nn.init.normal_(src.lora_B, std=0.05)
        dst.lora_A["default"].weight.data.copy_(src.lora_A.data)
        dst.lora_B["default"].weight.data.copy_(src.lora_B.data)
with torch.no_grad():
    ours_logits, peft_logits = probe.eval()(ids0, am0), pm_lora.eval()(input_ids=ids0, attention_mask=am0).logits
    moved = (ours_logits - base.eval()(ids0, am0)).abs().max()
torch.testing.assert_close(ours_logits, peft_logits)
print(f"ours == peft LoRA: max |Δlogits| = {(ours_logits - peft_logits).abs().max():.1e} "
      f"(the random B moved the logits by up to {moved:.2f}, so the check is not trivial)")
del probe, pm_lora, hf

# %%
hist_lora = train(lora, {"": LR_PEFT}, desc=f"LoRA r={LORA_R}")
record("LoRA", lora, hist_lora)

# %% [markdown]
# **證明 (c):合併(merge)。** 訓練後把 $W + \frac{\alpha}{r}BA$ 寫回權重,每個 `LoRALinear` 變回普通的 `nn.Linear`:
# 輸出相同,而模型的結構和原模型一模一樣,所以推論不會變慢。下面量一批 16 句 × 64 token 的前向時間(5 次取中位數);
# 合併後與原模型的計算完全相同,印出的毫秒差只是共用 CPU 上的計時起伏。

# %%
merged = copy.deepcopy(lora)
print("LoRA layers merged:", merge_lora(merged))
with torch.no_grad():
    torch.testing.assert_close(merged.eval()(ids0, am0), lora.eval()(ids0, am0), atol=1e-5, rtol=1e-4)
assert [type(m) for m in merged.modules()] == [type(m) for m in base.modules()]


@torch.no_grad()
def latency_ms(model, repeat=5):
    ids = torch.randint(1000, 20000, (16, 64), generator=torch.Generator().manual_seed(SEED)).to(device)
    model.eval()(ids)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model(ids)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


lat = {name: latency_ms(m) for name, m in (("base", base), ("LoRA, unmerged", lora), ("LoRA, merged", merged))}
print("forward, batch 16 × 64:", ", ".join(f"{k} {v:.0f} ms" for k, v in lat.items()))

# %% [markdown]
# **秩(rank)的影響。** $r$ = 1, 4, 8, 16,每個秩都用同樣的前 `RANK_STEPS` 批訓練(比主表短,為了時間)。

# %%
rank_rows = []
for r in RANKS:
    m = new_classifier()
    add_lora(m, r, 2 * r, dropout=LORA_DROPOUT)  # alpha = 2r keeps alpha/r = 2 for every rank
    n = trainable_only(m, lambda name: "lora_" in name or name.startswith("head."))
    train(m, {"": LR_PEFT}, steps=RANK_STEPS, desc=f"LoRA r={r}")
    rank_rows.append((r, n, n / helpers.count_parameters(m), accuracy(m)))
    print(f"r={r:2d}: {n:7,d} trainable ({rank_rows[-1][2]:.3%}), accuracy {rank_rows[-1][3]:.1%}")
    del m

# %% [markdown]
# **種子雜訊(seed noise)。** 同一方法(LoRA)換一個種子(初始化與批次順序都變)再訓練一次;後面只有差距大於這個
# 雜訊的排序才會被斷言。

# %%
lora_s1 = new_classifier(seed=SEED + 1)
add_lora(lora_s1, LORA_R, LORA_ALPHA, dropout=LORA_DROPOUT)
trainable_only(lora_s1, lambda n: "lora_" in n or n.startswith("head."))
train(lora_s1, {"": LR_PEFT}, batches=length_batches(Xtr, ytr, BATCH, shuffle_seed=SEED + 1), desc="LoRA, seed 1",
      seed=SEED + 1)
acc_s1 = accuracy(lora_s1)
noise = abs(acc_s1 - results["LoRA"]["acc"])
print(f"LoRA seed {SEED}: {results['LoRA']['acc']:.1%}, seed {SEED + 1}: {acc_s1:.1%} → seed noise {noise:.1%}")
del lora_s1

# %% [markdown]
# ## 5.3 Prompt Tuning 與P-Tuning 的應用 · Applying Prompt tuning and P-tuning
#
# 這兩種方法完全不動模型的權重,而是在輸入前面加上 `N_VIRTUAL` 個可訓練的向量,像一段「軟提示」(soft prompt)。
#
# ### 5.3.1 Prompt Tuning · Prompt tuning
#
# Lester 等人(2021)的 prompt tuning:虛擬 token 直接是參數。`peft` 把它們放在 `[CLS]` **之前**,注意力遮罩前面補 1,
# 位置編號也隨之後移;我們照做。手寫一次前向傳播,再斷言等於 `helpers.peft.PromptClassifier`:

# %%
prompt_model = new_classifier()
task_text = "is this movie review positive or negative ? the sentiment is"
init_ids = tok(task_text, add_special_tokens=False)["input_ids"]
init_ids = (init_ids * N_VIRTUAL)[:N_VIRTUAL]  # repeat the text to fill the prompt, as peft's TEXT init does
vocab_init = minilm.embeddings.word.weight[init_ids].detach()
soft = SoftPrompt(N_VIRTUAL, 384, init=vocab_init)
pt = PromptClassifier(prompt_model, soft).to(device)

with torch.no_grad():
    words = prompt_model.bert.embeddings.word(ids0)
    by_hand = prompt_model.eval()(attention_mask=torch.cat([am0.new_ones(len(ids0), N_VIRTUAL), am0], 1),
                                  inputs_embeds=torch.cat([soft.weight.expand(len(ids0), -1, -1), words], 1))
    torch.testing.assert_close(by_hand, pt.eval()(ids0, am0))
print("prompt by hand == PromptClassifier;  prompt initialised from:", tok.convert_ids_to_tokens(init_ids))

# %% [markdown]
# **與 `peft.PromptTuningConfig` 相同**(同樣的提示向量、同樣的分類頭),參數數量也相同。提示加上輸入超過模型的
# 最大長度時,得到清楚的錯誤。

# %%
pm_pt = peft.get_peft_model(to_hf_classifier(prompt_model), peft.PromptTuningConfig(task_type="SEQ_CLS",
                                                                                  num_virtual_tokens=N_VIRTUAL))
pm_pt.prompt_encoder["default"].embedding.weight.data.copy_(soft.weight.data)
with torch.no_grad():
    torch.testing.assert_close(pm_pt.eval()(input_ids=ids0, attention_mask=am0).logits, pt(ids0, am0))
n_pt = trainable_only(pt, lambda n: n.startswith("prompt.") or ".head." in n)
print(f"ours == peft prompt tuning; trainable: ours {n_pt:,}, peft {pm_pt.get_nb_trainable_parameters()[0]:,}")
assert n_pt == pm_pt.get_nb_trainable_parameters()[0]
del pm_pt
for bad in (lambda: SoftPrompt(0, 384), lambda: pt(torch.ones(1, 510, dtype=torch.long))):
    try:
        bad()
    except ValueError as e:
        print("ValueError:", e)

# %%
hist_pt = train(pt, {"": LR_PROMPT}, desc="prompt tuning")
record("prompt tuning", pt, hist_pt)

# %% [markdown]
# **真實詞向量初始化 vs 隨機初始化。** 同樣的訓練,只把提示的初值換成常態分布 N(0, 0.02²)(BERT 嵌入的初始化):

# %%
pt_rand = PromptClassifier(new_classifier(), SoftPrompt(N_VIRTUAL, 384)).to(device)
trainable_only(pt_rand, lambda n: n.startswith("prompt.") or ".head." in n)
train(pt_rand, {"": LR_PROMPT}, desc="prompt tuning, random init")
acc_pt_rand = accuracy(pt_rand)
print(f"prompt initialised from vocabulary {results['prompt tuning']['acc']:.1%} vs random {acc_pt_rand:.1%} "
      f"(seed noise {noise:.1%})")
del pt_rand

# %% [markdown]
# **陷阱:分類頭沒有訓練(peft#2642)。** 分類頭是新初始化的隨機層。某些 `peft` 版本的 prompt 類方法沒有自動把
# 分類頭放進 `modules_to_save`(peft#2642,由 #2646 修正),於是它保持隨機而且凍結;上面的參數數量顯示本機的
# `peft` 已經會訓練它。如果只訓練提示、凍結分類頭,模型只能移動幾個輸入向量去配合一個隨機的分類頭。量一下:

# %%
pt_frozen_head = PromptClassifier(new_classifier(), SoftPrompt(N_VIRTUAL, 384, init=vocab_init)).to(device)
trainable_only(pt_frozen_head, lambda n: n.startswith("prompt."))
train(pt_frozen_head, {"": LR_PROMPT}, desc="prompt tuning, frozen head")
acc_frozen_head = accuracy(pt_frozen_head)
print(f"head trained {results['prompt tuning']['acc']:.1%} vs head frozen {acc_frozen_head:.1%} "
      f"(majority class {majority:.1%})")
del pt_frozen_head

# %% [markdown]
# ### 5.3.2 P-Tuning · P-tuning
#
# P-tuning(Liu 等人 2021)不直接學提示向量,而是用一個小網路(提示編碼器,prompt encoder)產生它們:這裡是 `peft`
# 的 "MLP" 重參數化(嵌入 → Linear-ReLU-Linear-ReLU-Linear),`helpers.peft.PromptEncoder` 與它同結構、同參數名,
# 所以權重可以直接複製,logits 相等:

# %%
ptune_model = new_classifier()
encoder = PromptEncoder(N_VIRTUAL, 384, PTUNE_HIDDEN, kind="mlp")
ptune = PromptClassifier(ptune_model, encoder).to(device)
pm_ptune = peft.get_peft_model(to_hf_classifier(ptune_model), peft.PromptEncoderConfig(
    task_type="SEQ_CLS", num_virtual_tokens=N_VIRTUAL, encoder_hidden_size=PTUNE_HIDDEN,
    encoder_reparameterization_type="MLP"))
pm_ptune.prompt_encoder["default"].load_state_dict(encoder.state_dict())
with torch.no_grad():
    torch.testing.assert_close(pm_ptune.eval()(input_ids=ids0, attention_mask=am0).logits, ptune.eval()(ids0, am0))
n_ptune = trainable_only(ptune, lambda n: n.startswith("prompt.") or ".head." in n)
assert n_ptune == pm_ptune.get_nb_trainable_parameters()[0]
print(f"ours == peft P-tuning (MLP encoder); trainable {n_ptune:,} in both")
del pm_ptune

# %%
hist_ptune = train(ptune, {"": LR_PTUNE}, desc="P-tuning")
record("P-tuning", ptune, hist_ptune)

# %% [markdown]
# **推論只需要編碼器的輸出。** 訓練完,編碼器對固定的索引永遠產生同樣的 `N_VIRTUAL` 個向量;`export()` 把它們存成
# 一個 `SoftPrompt`,編碼器就可以丟掉。輸出相同,要存的東西也小得多:

# %%
exported = PromptClassifier(ptune_model, encoder.export())
with torch.no_grad():
    torch.testing.assert_close(exported.eval()(ids0, am0), ptune.eval()(ids0, am0))
enc_kb = sum(p.numel() for p in encoder.parameters()) * 4 / 1024
vec_kb = exported.prompt.weight.numel() * 4 / 1024
print(f"encoder {sum(p.numel() for p in encoder.parameters()):,} parameters ({enc_kb:.0f} KB) → exported vectors "
      f"{exported.prompt.weight.numel():,} ({vec_kb:.0f} KB), same logits")

# %% [markdown]
# ### 5.3.3 Prompt Tuning 和P-Tuning 組合微調 · Combining Prompt tuning and P-tuning
#
# 提示方法只改輸入,LoRA 改模型內部,兩者可以疊加:軟提示(詞向量初始化)+ query/value 上的 LoRA + 分類頭,
# 各用自己的學習率,和單獨使用時比較。

# %%
combo_model = new_classifier()
add_lora(combo_model, LORA_R, LORA_ALPHA, dropout=LORA_DROPOUT)
combo = PromptClassifier(combo_model, SoftPrompt(N_VIRTUAL, 384, init=vocab_init)).to(device)
trainable_only(combo, lambda n: n.startswith("prompt.") or "lora_" in n or ".head." in n)
hist_combo = train(combo, {"prompt.": LR_PTUNE, "": LR_PEFT}, desc="prompt + LoRA")
record("prompt + LoRA", combo, hist_combo)
print(f"prompt + LoRA {results['prompt + LoRA']['acc']:.1%} vs LoRA alone {results['LoRA']['acc']:.1%} vs prompt "
      f"alone {results['prompt tuning']['acc']:.1%} (seed noise {noise:.1%})")

# %% [markdown]
# ### 5.3.4 長文字情感分類模型的微調與驗證 · Fine-tuning and validating a long-text sentiment classifier
#
# IMDB 影評遠長於 SST-2 的句子,有些甚至超過模型的最大長度,而我們的視窗只有 `WINDOW` 個 token。三種推論方式:
# 只取開頭(head-only)、開頭 + 結尾各半(head+tail)、把整篇切成視窗再平均 logits(chunk-and-average)。
# 為了時間,這裡**不另外在 IMDB 上微調**:直接用上面在 SST-2 上全參數微調的模型(領域轉移),只在 `IMDB_TEST`
# 篇保留影評上測。對照組是最強的便宜基線:在前 `IMDB_TRAIN` 篇 IMDB 影評上訓練的 TF-IDF + 邏輯迴歸(logistic regression)。

# %%
imdb = load_imdb()
texts = [t.replace("<br />", " ") for t in imdb["text"]]
labels = np.array(imdb["label"])
test_idx = np.arange(len(texts) - 1000, len(texts))[:: 1000 // IMDB_TEST][:IMDB_TEST]  # spread over the last 1,000
pieces = tok([texts[i] for i in test_idx], add_special_tokens=False, verbose=False)["input_ids"]
lens = np.array([len(p) for p in pieces])
print(f"{len(test_idx)} test reviews: {np.mean(lens):.0f} tokens on average, {np.mean(lens > WINDOW - 2):.0%} longer "
      f"than one window of {WINDOW}, {np.mean(lens > 510):.0%} longer than 512; positives {labels[test_idx].mean():.1%}")

# %%
CLS_ID, SEP_ID, body = tok.cls_token_id, tok.sep_token_id, WINDOW - 2
windows, owner, headtail = [], [], []
for k, p in enumerate(pieces):
    for s in range(0, max(len(p), 1), body):
        windows.append([CLS_ID] + p[s:s + body] + [SEP_ID])
        owner.append(k)
    if len(p) > body:
        headtail.append((k, [CLS_ID] + p[:body // 2] + p[-(body - body // 2):] + [SEP_ID]))


@torch.no_grad()
def logits_of(model, seqs, batch_size=64):
    """Logits of token-id lists, batched by length, returned in the input order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.zeros(len(seqs), 2)
    model.eval()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids = torch.zeros(len(idx), max(len(seqs[i]) for i in idx), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, :len(seqs[i])] = torch.tensor(seqs[i])
        with helpers.autocast(device, enabled=AMP):
            out[torch.tensor(idx)] = model(ids.to(device), (ids != 0).long().to(device)).float().cpu()
    return out


t0 = time.perf_counter()
win_logits = logits_of(full, windows)
ht_logits = logits_of(full, [s for _, s in headtail])
imdb_seconds = time.perf_counter() - t0
owner_t = torch.tensor(owner)
first = torch.tensor([owner.index(k) for k in range(len(pieces))])
head_only = win_logits[first]
head_tail = head_only.clone()
head_tail[torch.tensor([k for k, _ in headtail])] = ht_logits
chunk_avg = torch.zeros(len(pieces), 2).index_add_(0, owner_t, win_logits) / torch.bincount(owner_t)[:, None]
y_imdb = torch.tensor(labels[test_idx])
imdb_acc = {name: (lg.argmax(-1) == y_imdb).float().mean().item()
            for name, lg in (("head-only", head_only), ("head+tail", head_tail), ("chunk-and-average", chunk_avg))}
print(f"{len(windows)} windows + {len(headtail)} head+tail inputs in {imdb_seconds:.0f} s;",
      ", ".join(f"{k} {v:.1%}" for k, v in imdb_acc.items()))

# %%
train_idx = np.arange(IMDB_TRAIN)
t0 = time.perf_counter()
tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000)
lr_clf = LogisticRegression(C=10, max_iter=1000).fit(tfidf.fit_transform([texts[i] for i in train_idx]),
                                                     labels[train_idx])
tfidf_pred = lr_clf.predict(tfidf.transform([texts[i] for i in test_idx]))
tfidf_acc = (tfidf_pred == labels[test_idx]).mean()
tfidf_seconds = time.perf_counter() - t0
best_minilm = max(imdb_acc, key=imdb_acc.get)
print(f"TF-IDF + logistic regression ({IMDB_TRAIN:,} IMDB reviews, {tfidf_seconds:.1f} s): {tfidf_acc:.1%} on the same "
      f"{len(test_idx)} reviews; best MiniLM ({best_minilm}, SST-2 only): {imdb_acc[best_minilm]:.1%}")
print(f"one review is {100 / len(test_idx):.1f} points of accuracy here, so differences of a few reviews are noise")

# %% [markdown]
# ### 各方法比較 · All methods at equal cost
#
# 每種方法都在同樣的 `STEPS` × 32 句上訓練,秒數是各自量到的訓練時間;檢查點(checkpoint)只存必須保存的參數
# (`save_trainable`,safetensors)。

# %%
print(f"{'method':15s} {'trainable':>11s} {'share':>8s} {'val acc':>8s} {'train s':>8s} {'ckpt KB':>9s}")
for name, r in results.items():
    print(f"{name:15s} {r['trainable']:11,d} {r['share']:8.3%} {r['acc']:8.1%} {r['seconds']:8.1f} {r['kb']:9,.0f}")
print(f"seed noise (LoRA, two seeds): {noise:.1%}; majority class {majority:.1%}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
names = list(results)
colors = plt.cm.tab10(np.arange(len(names)))
for c, name in zip(colors, names):
    axes[0].scatter(results[name]["share"] * 100, results[name]["acc"] * 100, color=c, label=name)
axes[0].set(xscale="log", xlabel="可訓練參數比例 (%)", ylabel="驗證準確率 (%)", title="準確率 vs 可訓練參數")
axes[0].axhline(majority * 100, color="gray", ls=":", lw=1)
axes[0].legend(fontsize=7)
axes[1].barh(names, [results[n]["seconds"] for n in names], color=colors)
axes[1].set(xlabel="秒", title=f"訓練時間({STEPS} 步)")
axes[2].plot([r for r, *_ in rank_rows], [a * 100 for *_, a in rank_rows], "o-")
axes[2].set(xscale="log", xticks=list(RANKS), xticklabels=[str(r) for r in RANKS], xlabel="LoRA 秩 r",
            ylabel="驗證準確率 (%)", title=f"秩的影響({RANK_STEPS} 步)")
plt.tight_layout()
plt.show()

# %% [markdown]
# 印出所有差距大於兩倍種子雜訊的配對;斷言只放在差距遠大於雜訊、也符合參數量直覺的兩組:完整微調與 adapter 都明顯勝過
# P-tuning(超過 10 個百分點)。其餘差距在這麼短的訓練下不當成結論。

# %%
acc = {k: r["acc"] for k, r in results.items()}
for a in acc:
    for b in acc:
        if acc[a] - acc[b] > 2 * noise:
            print(f"{a} ({acc[a]:.1%}) > {b} ({acc[b]:.1%}): gap {acc[a] - acc[b]:.1%}, seed noise {noise:.1%}")
for a in acc:
    assert acc[a] > majority, f"{a} is not above the majority class"
assert acc["full FT"] > acc["P-tuning"] + 0.10 and acc["adapter"] > acc["P-tuning"] + 0.10  # fixed claims
assert results["full FT"]["share"] > results["adapter"]["share"] > results["LoRA"]["share"] > \
    results["prompt tuning"]["share"]
assert min(results[k]["kb"] for k in results if k != "full FT") < results["full FT"]["kb"] / 10

# %% [markdown]
# ### 只存訓練過的參數 · Saving and loading only the trained parameters
#
# PEFT 的好處之一:一個任務只要存幾百 KB。把 LoRA 的檔案(safetensors,只有 `requires_grad` 的參數)載入一個**全新的**
# 預訓練模型(加上同樣的 LoRA 結構),logits 必須相等:

# %%
fresh = BertClassifier(from_pretrained(), num_labels=2, pooling="mean").to(device)  # a different, untrained head
add_lora(fresh, LORA_R, LORA_ALPHA, dropout=LORA_DROPOUT)
load_trainable(fresh, CKPT / "LoRA.safetensors")
with torch.no_grad():
    torch.testing.assert_close(fresh.eval()(ids0, am0), lora.eval()(ids0, am0))
print(f"reloaded {(CKPT / 'LoRA.safetensors').stat().st_size / 1024:.0f} KB into a fresh MiniLM: same logits")

# %% [markdown]
# ## 5.4 本章小結 · Summary
#
# | 情況 | 建議 |
# |---|---|
# | 只有一個任務、算力與儲存都夠 | 全參數微調:通常最準,但每個任務存一整份模型 |
# | 很多任務共用一個基礎模型、要小檢查點 | LoRA:參數少、可合併回權重(推論零額外延遲) |
# | 需要模組化、可插拔的任務層 | Adapter:結構簡單,但推論多兩個小矩陣乘法,無法合併 |
# | 完全不能改模型權重(例如共用的推論服務) | Prompt tuning / P-tuning:只改輸入,檢查點最小;小模型上準確率較低,別忘了訓練分類頭 |
# | 長文本 | 切窗再平均;先和 TF-IDF 這類便宜基線比一比 |

# %%
rows = "\n".join(f"  - {k}: {r['acc']:.1%} with {r['trainable']:,} trainable ({r['share']:.2%}), {r['seconds']:.0f} s, "
                 f"{r['kb']:,.0f} KB" for k, r in results.items())
print(f"""What we built and measured ({STEPS} steps × {BATCH} SST-2 sentences each, {VAL_N} validation sentences):
{rows}
- Adapters: output unchanged at initialisation (asserted); LoRA: same trainable count and logits as peft, merged
  model equal to the unmerged one, forward {lat['LoRA, merged']:.0f} ms merged vs {lat['LoRA, unmerged']:.0f} ms unmerged
  vs {lat['base']:.0f} ms base.
- LoRA rank ({RANK_STEPS} steps): {', '.join(f'r={r} {a:.1%}' for r, _, _, a in rank_rows)}; seed noise {noise:.1%}.
- Prompt tuning: vocabulary init {results['prompt tuning']['acc']:.1%} vs random {acc_pt_rand:.1%}; frozen head
  {acc_frozen_head:.1%}. P-tuning and prompt tuning equal to peft; the P-tuning encoder exports to {vec_kb:.0f} KB of vectors.
- IMDB ({len(test_idx)} reviews, SST-2 model): {', '.join(f'{k} {v:.1%}' for k, v in imdb_acc.items())};
  TF-IDF + LR trained on {IMDB_TRAIN:,} IMDB reviews {tfidf_acc:.1%}.""")

# %%
helpers.report(5, full_acc=acc["full FT"], adapter_acc=acc["adapter"], lora_acc=acc["LoRA"],
               prompt_acc=acc["prompt tuning"], ptuning_acc=acc["P-tuning"], prompt_lora_acc=acc["prompt + LoRA"],
               full_share=results["full FT"]["share"], adapter_share=results["adapter"]["share"],
               lora_share=results["LoRA"]["share"], prompt_share=results["prompt tuning"]["share"],
               ptuning_share=results["P-tuning"]["share"], prompt_lora_share=results["prompt + LoRA"]["share"],
               seed_noise=noise, imdb_chunk_acc=imdb_acc["chunk-and-average"], imdb_tfidf_acc=tfidf_acc)

# %% [markdown]
# ## 5.5 思考題 · Exercises
#
# **1.** 如果把 LoRA 加在每層全部六個線性層上(query、key、value、注意力輸出、兩個前饋層),$r = 8$ 時有多少可訓練參數?
# 和 `peft` 的 `target_modules` 算出來的一樣嗎?

# %% tags=["answer"]
all6 = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
m = copy.deepcopy(base)
add_lora(m, 8, 16, targets=all6)
n6 = trainable_only(m, lambda n: "lora_" in n or n.startswith("head."))
pm6 = peft.get_peft_model(to_hf_classifier(base), peft.LoraConfig(
    task_type="SEQ_CLS", r=8, lora_alpha=16,
    target_modules=r"bert\.encoder\.layer\.\d+\..*(query|key|value|dense)"))  # not the unused pooler
print(f"all six Linear layers: ours {n6:,}, peft {pm6.get_nb_trainable_parameters()[0]:,} "
      f"(query+value only: {n_lora:,})")
print(f"Each layer adds r·(d_in + d_out): the two feed-forward layers (384↔1536) cost the most; all six together "
      f"train {n6 / helpers.count_parameters(m):.2%} of the model, {n6 / n_lora:.1f}× the query+value version.")

# %% [markdown]
# **2.** 合併之後還能「拆開」嗎?從合併後的權重減去 $\frac{\alpha}{r}BA$,和原來凍結的權重差多少?

# %% tags=["answer"]
q_lora, q_merged = lora.bert.blocks[0].self_attn.q_proj, merged.bert.blocks[0].self_attn.q_proj
with torch.no_grad():
    unmerged_w = q_merged.weight - q_lora.scale * q_lora.lora_B @ q_lora.lora_A
print(f"max |W_unmerged − W| = {(unmerged_w - q_lora.base.weight).abs().max():.1e}")
print("Unmerging recovers the frozen weight up to float32 rounding, so one base model can switch between tasks "
      "by adding and subtracting each task's BA.")

# %% [markdown]
# **3.** 為什麼 $B$ 要從 0 開始?把 $B$ 也隨機初始化(和 $A$ 一樣),訓練前預訓練模型的句子向量會被改變多少?

# %% tags=["answer"]
def sentence_vectors(bert):
    with torch.no_grad():
        return F.normalize(mean_pool(bert(ids0, am0), am0), dim=-1)


m = copy.deepcopy(minilm).to(device).eval()
v_before = sentence_vectors(m)
add_lora(m, LORA_R, LORA_ALPHA)
v_b0 = sentence_vectors(m)
for mod in m.modules():
    if isinstance(mod, LoRALinear):
        nn.init.kaiming_uniform_(mod.lora_B, a=5 ** 0.5)
v_rand = sentence_vectors(m)
print(f"cosine(sentence vector before, after adding LoRA) on {len(ids0)} sentences: B = 0 "
      f"{(v_before * v_b0).sum(-1).min():.4f} (min); B random {(v_before * v_rand).sum(-1).mean():.2f} (mean)")
print("With B = 0 the model starts exactly as the pretrained one; a random B moves every sentence vector away "
      "from what pretraining learned, so training would first have to undo that damage.")

# %% [markdown]
# **4.** Adapter 的瓶頸寬度與 LoRA 的秩都控制參數量。列出瓶頸 8、16、64、256 的 adapter 參數量,與 LoRA $r$ = 1…16 比較。

# %% tags=["answer"]
for dim in (8, 16, 64, 256):
    m = copy.deepcopy(base)
    add_adapters(m, dim)
    n_ad = sum(p.numel() for n, p in m.named_parameters() if "out_proj.1." in n or "fc2.1." in n)
    print(f"adapter bottleneck {dim:3d}: {n_ad:9,d} adapter parameters")
print("LoRA:", ", ".join(f"r={r} {n - 770:,}" for r, n, _, _ in rank_rows), "(without the 770 of the head)")
print("An adapter of width k costs about 2·(2·384·k) per layer, the same order as LoRA of rank k on two 384×384 "
      "matrices; the difference is that LoRA merges away and the adapter stays in the forward pass.")

# %% [markdown]
# **5.** 動手做:把 P-tuning 的編碼器換成 `peft` 的 "LSTM" 版本(雙向 2 層 LSTM + MLP)。參數量是多少?和 `peft` 的
# 輸出還相等嗎?

# %% tags=["answer"]
lstm_enc = PromptEncoder(N_VIRTUAL, 384, PTUNE_HIDDEN, kind="lstm")
lstm_model = PromptClassifier(copy.deepcopy(base), lstm_enc).to(device).eval()
pm_lstm = peft.get_peft_model(to_hf_classifier(base), peft.PromptEncoderConfig(
    task_type="SEQ_CLS", num_virtual_tokens=N_VIRTUAL, encoder_hidden_size=PTUNE_HIDDEN,
    encoder_reparameterization_type="LSTM", encoder_dropout=0.0)).eval()
pm_lstm.prompt_encoder["default"].load_state_dict(lstm_enc.state_dict())
with torch.no_grad():
    torch.testing.assert_close(pm_lstm(input_ids=ids0, attention_mask=am0).logits, lstm_model(ids0, am0))
n_lstm = sum(p.numel() for p in lstm_enc.parameters())
print(f"LSTM encoder: {n_lstm:,} parameters vs MLP encoder {sum(p.numel() for p in encoder.parameters()):,}; "
      f"equal to peft's")
print("The LSTM makes neighbouring virtual tokens depend on each other but costs several times the MLP's "
      "parameters; after export both shrink to the same N_VIRTUAL × 384 vectors.")
