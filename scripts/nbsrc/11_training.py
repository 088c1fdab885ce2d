"""Source of notebooks/11_training.ipynb (percent format). Build: python scripts/nbsrc/build.py scripts/nbsrc/11_training.py"""
# %% [markdown]
# # 第 11 章 模型訓練實戰 · Training in practice
#
# 前面每一章的訓練都在筆記本的一格裡跑完。真實的訓練跑好幾小時、在儀表板(dashboard)上被盯著看、會因為搶佔
# (pre-emption)、記憶體不足(OOM)或斷電而死掉,而且必須**一模一樣地**從斷點接著跑。本章把全書的零件組成這樣一條
# 管線(pipeline),而且都是真的檔案:`helpers/pipeline.py` 與訓練腳本 `scripts/train.py`,筆記本只負責驅動它們:
#
# 1. **資料**:第 6 章的清洗步驟改寫成 `datasets` 管線(`map(batched=True, num_proc=2)`、`filter`、串流模式),
#    斷詞後存成 nanoGPT 式的 `uint16` 記憶體映射(memory-mapped)token 檔;並排比較 GPT-2、bert-base-chinese 與自己訓練的分詞器;
# 2. **啟動**:一個設定檔(config)描述整個執行,同一支腳本以單行程與 `torchrun --nproc_per_node 2` 啟動,印出 tokens/s 與 MFU;
# 3. **監控**:TensorBoard 事件檔在筆記本裡**讀回來**畫圖;檢查點(checkpoint)原子寫入、只保留最新 k 個;
# 4. **中斷與恢復**:從筆記本對訓練行程送 `SIGKILL`,再 `--resume`,`assert` 最後的參數與不中斷的執行**逐位元相同**;
#    並量出只存一部分狀態時錯在哪裡;
# 5. **IMDB 全流程**:清洗、head+tail 截斷、DDP 訓練、監控、殺掉再恢復,最後和 TF-IDF + 邏輯迴歸(logistic regression)基準誠實比較。
#
# 執行的產物(檢查點、事件檔、token 檔)都寫在 `notebooks/runs/ch11/`,已在 `.gitignore` 中,`make clean` 會刪掉。

# %%
import json
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

import helpers
from helpers.data import (
    ZH_NOVELS,
    bert_chinese_tokenizer,
    dataset_path,
    gpt2_tokenizer,
    load_imdb,
    load_tiny_shakespeare,
    load_zh_novel,
)
from helpers.pipeline import (
    Checkpoints,
    ResumableLoader,
    RunConfig,
    build_model,
    flops_per_token,
    head_tail,
    open_token_file,
    read_scalars,
    read_texts,
    run,
    summary,
    torchrun_cmd,
    write_token_file,
)
from helpers.text import clean_text, text_hash
from helpers.train import load_checkpoint

helpers.set_style()
datasets.disable_progress_bars()
device = helpers.get_device()
print(f"torch {torch.__version__}, datasets {datasets.__version__}, device {device}, {torch.get_num_threads()} threads, "
      f"native bf16: {helpers.bf16_fast(device)}")

# %% [markdown]
# **設定 · Configuration.** 為 2 核 CPU 設定:語言模型是 2 層、寬 64 的 GPT,詞表 2,048,只訓練 200 步;IMDB 分類器是
# 1 層 Transformer,訓練 150 步。這些步數是為了讓「殺掉再恢復」的實驗在幾分鐘內跑完,不是為了好模型;
# 註解寫出 GPU 上該調高的數值(訓練腳本本身不用改)。

# %%
SEED = 0
RUN_DIR = Path("runs/ch11")  # everything this chapter writes (gitignored; `make clean` removes it)
TRAIN_SCRIPT = Path("../scripts/train.py")
MIN_CHARS = 8  # documents shorter than this are dropped
TOKENIZER_VOCAB = 2048  # our byte-level BPE; GPU: 32_000 on a larger corpus
TOKENIZER_SAMPLE = 8  # train the tokenizer on every 8th training document
VAL_EVERY = 20  # every 20th document goes to validation
LM_CONFIG = dict(n_layer=2, n_head=4, n_embd=64, block=64, dropout=0.1, batch=16, lr=1e-2, warmup=10,
                 steps=200, save_every=50, keep_last=3, log_every=10, eval_every=50, eval_batches=8,
                 sample_every=100)  # GPU: n_layer=12, n_embd=768, block=1024, batch=256, steps=20_000
DDP_STEPS = 40  # the short torchrun run of 11.2
KILL_AT = 160  # SIGKILL the language model when it prints this step (last checkpoint: 150)
IMDB_MAX_LEN, IMDB_HEAD = 128, 64  # head + tail truncation: the first 64 and the last 64 tokens; GPU: 512, 128
IMDB_VOCAB = 4096
IMDB_CONFIG = dict(n_layer=1, n_head=4, n_embd=64, dropout=0.1, batch=32, lr=1e-3, warmup=15, steps=150,
                   weight_decay=0.01, save_every=25, keep_last=2, log_every=10, eval_every=50)  # GPU: n_layer=4, n_embd=256, steps=2_000
IMDB_KILL_AT = 110  # SIGKILL the DDP run when it prints this step (last checkpoint: 100)

# %% [markdown]
# ## 11.1 資料前置處理與Tokenization 細節 · Preprocessing and tokenization in detail
#
# 預訓練語料的處理分兩步:先把原始文字**清洗**成乾淨的文件,再用分詞器(tokenizer)轉成整數,存成訓練時可以隨機讀取、
# 又不必整個載入記憶體的格式。這裡的語料是四大名著(簡體字)加上 Tiny Shakespeare(英文),以段落為一份文件;
# 各來源的文件數與字數印在下面。

# %% [markdown]
# ### 11.1.1 大規模文字資料清洗 · Cleaning text at scale
#
# 第 6 章的 `clean_text`(去 HTML、網址、NFKC、全形轉半形、空白與控制字元)寫成批次函式,交給 `datasets` 的
# `Dataset.map(batched=True)`;`num_proc=2` 讓兩個行程各處理一半的資料。同一函式也加上雜湊(hash)欄位,用來去除完全重複的文件。

# %%
shutil.rmtree(RUN_DIR, ignore_errors=True)  # each execution of this chapter starts from nothing
docs, sources = [], []
for name in ZH_NOVELS:
    paragraphs = [p for p in load_zh_novel(name).split("\n") if p.strip()]
    docs += paragraphs
    sources += [name] * len(paragraphs)
paragraphs = [p for p in load_tiny_shakespeare().split("\n\n") if p.strip()]
docs += paragraphs
sources += ["shakespeare"] * len(paragraphs)
raw = datasets.Dataset.from_dict({"text": docs, "source": sources})
chars = dict.fromkeys(sources, 0)
for d, s in zip(docs, sources):
    chars[s] += len(d)
print(f"{len(raw):,} raw documents, {sum(chars.values()):,} characters")
for s, n in chars.items():
    print(f"  {s:12s} {sources.count(s):6,} documents {n:10,} characters")


def clean_batch(batch: dict) -> dict:
    """Chapter 06's cleaning on a batch of documents, plus a length and a hash column for the filters."""
    texts = [clean_text(t) for t in batch["text"]]
    return {"text": texts, "n_chars": [len(t) for t in texts], "hash": [text_hash(t) for t in texts]}


cleaned, speed = {}, {}
for num_proc in (1, 2):
    t0 = time.perf_counter()
    cleaned[num_proc] = raw.map(clean_batch, batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                                load_from_cache_file=False, keep_in_memory=True)
    speed[num_proc] = len(raw) / (time.perf_counter() - t0)
    print(f"map with num_proc={num_proc}: {speed[num_proc]:,.0f} documents/s")
assert cleaned[1]["text"] == cleaned[2]["text"], "two processes must give exactly the serial result"
print(f"2 processes: {speed[2] / speed[1]:.2f}x the documents/s of one (same output, asserted)")

# %% [markdown]
# 兩個行程的輸出與單行程**完全相同**(`assert`),速度比值印在上面:遠不到 2 倍,而且重跑時這個比值會明顯跳動 —— **此規模下看不出穩定的加速**。
# 原因是 `datasets` 要先把資料切片、序列化(pickle)送到子行程、再把結果寫成 Arrow 接回來;只有 400 多萬字元時,
# 這些固定開銷和清洗本身差不多大。資料到幾十 GB 時,固定開銷可以忽略,`num_proc` 才接近線性加速。
# 接著過濾太短的文件,再用雜湊去掉完全重複的(重複的多半是網站的頁首、頁尾與重複出現的詩句):

# %%
ds = cleaned[2].filter(lambda b: [n >= MIN_CHARS for n in b["n_chars"]], batched=True, keep_in_memory=True)
n_long = len(ds)
seen_at = {}  # hash -> index of its first occurrence, which is the one kept
keep = [i for i, h in enumerate(ds["hash"]) if seen_at.setdefault(h, i) == i]
dupes = [t for i, (t, h) in enumerate(zip(ds["text"], ds["hash"])) if seen_at[h] != i]
ds = ds.select(keep, keep_in_memory=True)
print(f"{len(raw):,} documents → {n_long:,} with at least {MIN_CHARS} characters → {len(ds):,} after removing "
      f"{len(dupes)} exact duplicates, e.g. {dupes[:3]}")
assert len(set(ds["hash"])) == len(ds)

# %% [markdown]
# **串流模式(streaming)**:資料放不進記憶體時,`load_dataset(..., streaming=True)` 回傳 `IterableDataset`,
# `map` 與 `filter` 都是惰性(lazy)的,只在迭代時一筆一筆處理,記憶體用量與資料大小無關。這裡直接從磁碟上的小說文字檔串流,
# 並 `assert` 串流出來的前幾份文件與上面記憶體中的管線結果相同:

# %%
novel_files = [str(dataset_path("zh_novels") / "zh_novels" / f"{name}.txt") for name in ZH_NOVELS]  # the same order
stream = datasets.load_dataset("text", data_files={"train": novel_files}, split="train", streaming=True)
stream = stream.map(clean_batch, batched=True, batch_size=1000).filter(lambda b: [n >= MIN_CHARS for n in b["n_chars"]],
                                                                        batched=True)
print(type(stream).__name__, "- nothing has been read yet")
t0 = time.perf_counter()
streamed = [ex["text"] for _, ex in zip(range(2000), stream)]
print(f"first 2,000 streamed documents in {time.perf_counter() - t0:.2f} s: {streamed[0][:30]}…")
in_memory = [t for t, s in zip(ds["text"], ds["source"]) if s == Path(novel_files[0]).stem][:10]
assert streamed[:10] == in_memory, "streaming and in-memory cleaning must agree"

# %% [markdown]
# ### 11.1.2 常用分詞器的使用 · Using common tokenizers
#
# 先把文件分成訓練與驗證集(每 20 份取 1 份做驗證),再用 Hugging Face `tokenizers`(Rust 實作)在訓練集的 1/8 上訓練一個
# 位元組層級(byte-level)BPE,詞表 2,048。位元組層級表示任何字串都能編碼,沒有未知詞(unknown token)。

# %%
texts, srcs = ds["text"], ds["source"]
train_docs = [t for i, t in enumerate(texts) if i % VAL_EVERY]
val_docs = [t for i, t in enumerate(texts) if i % VAL_EVERY == 0]
val_src = [s for i, s in enumerate(srcs) if i % VAL_EVERY == 0]
EOS = "<|endoftext|>"
ours = Tokenizer(models.BPE())
ours.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
ours.decoder = decoders.ByteLevel()
t0 = time.perf_counter()
ours.train_from_iterator(train_docs[::TOKENIZER_SAMPLE], trainers.BpeTrainer(
    vocab_size=TOKENIZER_VOCAB, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False))
RUN_DIR.mkdir(parents=True, exist_ok=True)
ours.save(str(RUN_DIR / "tokenizer.json"))
print(f"trained a {ours.get_vocab_size():,}-token byte-level BPE on {len(train_docs[::TOKENIZER_SAMPLE]):,} documents "
      f"in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# 三個分詞器在同一份驗證文字(中文段落與英文段落各取 300 份)上比較:每字元幾個 token(越少,同樣的上下文長度裝得越多)、
# 未知詞比例,以及**來回轉換**(round trip)`decode(encode(x)) == x` 是否完全還原。

# %%
gpt2, bert_zh = gpt2_tokenizer(), bert_chinese_tokenizer()
samples = {"中文": [t for t, s in zip(val_docs, val_src) if s != "shakespeare"][:300],
           "英文": [t for t, s in zip(val_docs, val_src) if s == "shakespeare"][:300]}
tokenizers_ = {
    "GPT-2 byte BPE (50,257)": (lambda b: gpt2(b)["input_ids"],
                                lambda ids: gpt2.decode(ids, clean_up_tokenization_spaces=False), None),
    "bert-base-chinese WordPiece (21,128)": (lambda b: bert_zh(b, add_special_tokens=False)["input_ids"],
                                             lambda ids: bert_zh.decode(ids), bert_zh.unk_token_id),
    f"ours: byte BPE ({ours.get_vocab_size():,})": (lambda b: [e.ids for e in ours.encode_batch(b)], ours.decode, None),
}
rows = {}
for name, (encode, decode, unk) in tokenizers_.items():
    for lang, batch in samples.items():
        t0 = time.perf_counter()
        ids = encode(batch)
        seconds = time.perf_counter() - t0
        n_tok = sum(map(len, ids))
        exact = np.mean([decode(i) == t for i, t in zip(ids, batch)])
        unk_rate = sum(x == unk for i in ids for x in i) / n_tok if unk is not None else 0.0
        rows[name, lang] = (n_tok / sum(map(len, batch)), unk_rate, exact, sum(map(len, batch)) / seconds)
print(f"{'tokenizer':38s}{'text':>5s}{'tokens/char':>12s}{'unknown':>9s}{'round trip':>11s}{'chars/s':>12s}")
for (name, lang), (tpc, unk_rate, exact, cps) in rows.items():
    print(f"{name:38s}{lang:>5s}{tpc:12.2f}{unk_rate:9.2%}{exact:11.0%}{cps:12,.0f}")
for name in tokenizers_:
    if "WordPiece" not in name:
        assert all(rows[name, lang][2] == 1.0 for lang in samples), f"{name} must round-trip exactly"
bert_en = bert_zh(samples["英文"][:1], add_special_tokens=False)["input_ids"][0]
print("bert-base-chinese on English:", samples["英文"][0][:60], "→", bert_zh.decode(bert_en)[:60])
assert rows["bert-base-chinese WordPiece (21,128)", "英文"][2] < 1.0  # lowercases and drops spaces: lossy

# %% [markdown]
# 讀表:
# - GPT-2 的詞表為英文而建:英文最省,中文平均每個字卻要 2 個以上的位元組 token(一個漢字在 UTF-8 裡是 3 個位元組);
# - bert-base-chinese 對中文一字一 token,但詞表外的字元變成 `[UNK]`,解碼時在漢字之間插入空白、英文轉小寫並丟掉原本的空白,
#   所以中英文都**無法**還原(上面那行就是例子);
# - 我們的 2,048 詞 BPE 是在這份語料上訓練的,詞表大多給了常用漢字:中文一字約一 token,比 GPT-2 省一半;英文則比 GPT-2 費,
#   因為留給英文合併的名額很少。詞表怎麼分配,取決於訓練分詞器的語料。
#
# 位元組層級的兩個分詞器都 100% 還原(`assert`)。
#
# **速度**:第 1 章的 Python BPE 與 `tokenizers` 用**同一組合併規則**(merges)時,輸出必須一模一樣,差的只是速度。
# 這裡用 `tokenizers` 在莎士比亞上學 500 個合併,把規則拿出來交給第 1 章的 Python 版本:

# %%
def apply_bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """Chapter 01's BPE: replay the merges in the order they were learned."""
    pieces = list(word)
    for a, b in merges:
        i, out = 0, []
        while i < len(pieces):
            if i + 1 < len(pieces) and pieces[i] == a and pieces[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(pieces[i])
                i += 1
        pieces = out
    return pieces


en_train = [t for i, t in enumerate(texts) if i % VAL_EVERY and srcs[i] == "shakespeare"]
learner = Tokenizer(models.BPE())
learner.pre_tokenizer = pre_tokenizers.Whitespace()
learner.train_from_iterator(en_train, trainers.BpeTrainer(vocab_size=600, show_progress=False))  # > 500 merges
merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in json.loads(learner.to_str())["model"]["merges"]][:500]
vocab = {c: i for i, c in enumerate(sorted({c for t in texts if t for c in t}))}  # every character: no unknowns
for a, b in merges:
    vocab.setdefault(a + b, len(vocab))
wp_500 = Tokenizer(models.BPE(vocab=vocab, merges=merges))
wp_500.pre_tokenizer = pre_tokenizers.Whitespace()
held = samples["英文"][:60]
t0 = time.perf_counter()
py_tokens = [[p for w, _ in wp_500.pre_tokenizer.pre_tokenize_str(t) for p in apply_bpe(w, merges)] for t in held]
py_cps = sum(map(len, held)) / (time.perf_counter() - t0)
t0 = time.perf_counter()
rs_tokens = [e.tokens for e in wp_500.encode_batch(held)]
rs_cps = sum(map(len, held)) / (time.perf_counter() - t0)
assert py_tokens == rs_tokens, "the same merges must give the same tokens"
print(f"same 500 merges, same {sum(map(len, py_tokens)):,} tokens (asserted); chapter 01's Python: {py_cps:,.0f} chars/s, "
      f"tokenizers (Rust, batched): {rs_cps:,.0f} chars/s = {rs_cps / py_cps:.0f}x")

# %% [markdown]
# 最後把整個語料用我們的分詞器編碼,文件之間插入 `<|endoftext|>`,存成 nanoGPT 式的扁平 `uint16` 檔(詞表 < 65,536 時每個 token 2 位元組),
# 另附一個 JSON 說明形狀與分詞器。訓練時用 `np.memmap` 開啟:不必讀進記憶體,作業系統只載入被讀到的頁面(page)。

# %%
eos = ours.token_to_id(EOS)
t0 = time.perf_counter()


def flatten(batch_docs: list[str]) -> np.ndarray:
    return np.fromiter((i for e in ours.encode_batch(batch_docs) for i in (*e.ids, eos)), dtype=np.int64)


train_ids, val_ids = flatten(train_docs), flatten(val_docs)
print(f"encoded {len(train_docs) + len(val_docs):,} documents in {time.perf_counter() - t0:.1f} s: "
      f"{len(train_ids):,} training and {len(val_ids):,} validation tokens")
meta = dict(vocab_size=ours.get_vocab_size(), tokenizer=str((RUN_DIR / "tokenizer.json").resolve()))
write_token_file(RUN_DIR / "data/train", train_ids, **meta)
write_token_file(RUN_DIR / "data/val", val_ids, **meta)
t0 = time.perf_counter()
mm, mm_meta = open_token_file(RUN_DIR / "data/train")
window = mm[1_000_000:1_000_020]
print(f"train.bin: {os.path.getsize(RUN_DIR / 'data/train.bin') / 2**20:.1f} MiB; opened and read 20 tokens at "
      f"offset 1,000,000 in {1000 * (time.perf_counter() - t0):.2f} ms: {ours.decode(window.tolist())!r}")
assert np.array_equal(mm, train_ids) and mm.dtype == np.uint16

# %% [markdown]
# ## 11.2 大規模預訓練模型的設置與啟動 · Configuring and launching large-scale pretraining
#
# 一次執行由**一個設定**完全描述:`RunConfig` 資料類別(dataclass)存成 JSON,模型大小、批次、學習率排程、精度、檢查點間隔都在裡面。
# 訓練腳本 `scripts/train.py` 只讀這個檔案,所以同一個設定在筆電與 GPU 叢集上跑的是同一件事。
# 設定在建立時就驗證,不合理的值立刻得到清楚的錯誤,而不是訓練到一半才出現奇怪的形狀錯誤:

# %%
lm_cfg = RunConfig(task="lm", train_data=str((RUN_DIR / "data/train").resolve()),
                   val_data=str((RUN_DIR / "data/val").resolve()), seed=SEED, **LM_CONFIG)
lm_cfg_path = lm_cfg.save(RUN_DIR / "lm.json")
print(lm_cfg_path.read_text()[:400], "…")
for bad in (dict(lr=-1e-3), dict(n_embd=66), dict(warmup=500)):
    try:
        RunConfig(**{**lm_cfg.to_dict(), **bad})
    except ValueError as e:
        print(f"{bad} → ValueError: {e}")
try:
    lm_cfg.validate(world_size=3)
except ValueError as e:
    print(f"3 processes → ValueError: {e}")

# %% [markdown]
# 從筆記本以子行程(subprocess)啟動:先單行程,再用 `torchrun --nproc_per_node 2`(兩個行程、各 1 個執行緒,gloo 後端)。
# 腳本每 10 步印一行、寫 TensorBoard,每 50 步評估並存檢查點。

# %%
def launch(cmd: list, **kw) -> dict:
    out = run([str(c) for c in cmd], **kw)
    lines = out["out"].splitlines()
    print("\n".join(lines[:2] + ["…"] + lines[-4:-1]))
    return out


ref = launch([sys.executable, TRAIN_SCRIPT, lm_cfg_path, "--out-dir", RUN_DIR / "lm_ref"])
ref_summary = summary(ref["out"])
print(f"one process: {ref_summary['params']:,} parameters, {ref['seconds']:.1f} s in all (start-up included), "
      f"{ref_summary['train_seconds']:.1f} s training, {ref_summary['tokens_per_s']:,} tokens/s, "
      f"val loss {ref_summary['val_loss']:.3f}")

# %%
ddp_cfg_path = RunConfig(**{**lm_cfg.to_dict(), "steps": DDP_STEPS, "eval_every": DDP_STEPS}).save(RUN_DIR / "lm_ddp.json")
ddp = launch(torchrun_cmd(TRAIN_SCRIPT, ddp_cfg_path, "--out-dir", RUN_DIR / "lm_ddp", nproc=2), threads=1)
ddp_summary = summary(ddp["out"])
print(f"torchrun, 2 processes: {ddp['seconds']:.1f} s in all, {ddp_summary['tokens_per_s']:,} tokens/s "
      f"({ddp_summary['tokens_per_s'] / ref_summary['tokens_per_s']:.2f}x one process with 2 threads)")

# %% [markdown]
# **MFU**(model FLOPs utilization):訓練每個 token 約需 $6N$ 次浮點運算(前向 $2N$、反向 $4N$,$N$ 為參數量),
# 注意力再加 $12\,L\,d\,T$(nanoGPT 的 `estimate_mfu`)。把 tokens/s 換成 FLOP/s,除以這台機器量得的矩陣乘法峰值
# (與第 0 章相同的量法),就是模型用到了硬體的幾成。峰值是 **float32** 矩陣乘法量的;設定裡的 `precision="auto"` 在有
# 原生 bf16 的 CPU 上(本次執行,開頭印出 `native bf16: True`)讓訓練在 bf16 autocast 下執行,而 bf16 的峰值通常更高,
# 所以這裡的 MFU 是相對 float32 峰值的比例,相對 bf16 峰值會更低:

# %%
def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Chapter 00's measurement: the best of `repeats` n x n float32 matmuls, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


peak = matmul_gflops()
fpt = flops_per_token(ref_summary["params"], lm_cfg.n_layer, lm_cfg.n_embd, lm_cfg.block)
for name, s in (("one process", ref_summary), ("torchrun x 2", ddp_summary)):
    print(f"{name:13s}: {fpt * s['tokens_per_s'] / 1e9:5.1f} GFLOP/s of a measured {peak:.0f} GFLOP/s peak "
          f"→ MFU {fpt * s['tokens_per_s'] / 1e9 / peak:.1%}")
mfu = fpt * ref_summary["tokens_per_s"] / 1e9 / peak

# %% [markdown]
# MFU 遠低於 100%:這個模型很小,每一步有相當的時間花在小運算子的固定開銷、softmax、dropout 與優化器上,
# 而不是能跑到峰值的大矩陣乘法。大模型在 GPU 上的好成績約 40–60%(PaLM 論文報告 46%)。
# DDP 在這裡不是為了加速:兩個各用 1 個執行緒的行程,與一個用 2 個執行緒的行程,用的是同樣兩個核心(第 7 章量過兩者相當;
# 上面的比值也會隨機器當下的負載上下跳動)。`torchrun` 的價值是**同一支腳本**在多 GPU、多機器上不必改。

# %% [markdown]
# ## 11.3 預訓練過程中的監控與中間結果儲存 · Monitoring pretraining and saving intermediate results
#
# 腳本用 `torch.utils.tensorboard.SummaryWriter` 記錄損失、學習率、梯度範數、tokens/s、驗證損失與生成樣本。
# 訓練時在終端機執行下面這行,就能在瀏覽器看即時曲線;這裡則把事件檔(event file)**讀回來**畫圖,讓 GitHub 與 nbval 也看得到:

# %%
print(f"tensorboard --logdir {(RUN_DIR).resolve()}   # then open http://localhost:6006")
scalars = read_scalars(RUN_DIR / "lm_ref" / "tb")
print("tags:", sorted(scalars))
fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
axes[0].plot(*scalars["train/loss"], label="訓練")
axes[0].plot(*scalars["val/loss"], "o-", label="驗證")
counts = np.bincount(train_ids, minlength=ours.get_vocab_size()) + 1  # add-one smoothed unigram from the training tokens
unigram_ce = float(-np.log(counts[val_ids] / counts.sum()).mean())
axes[0].axhline(unigram_ce, color="gray", ls=":", label=f"一元模型(unigram){unigram_ce:.2f}")
axes[0].legend()
for ax, tag, title in zip(axes, ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"),
                          ("損失(nats/token)", "學習率", "梯度範數(裁剪前)", "tokens/s")):
    if tag != "train/loss":
        ax.plot(*scalars[tag])
    ax.set_title(title)
    ax.set_xlabel("步數")
plt.tight_layout()
plt.show()
steps_logged, losses_logged = scalars["train/loss"]
assert steps_logged == list(range(10, lm_cfg.steps + 1, 10))
val_loss = scalars["val/loss"][1][-1]
print(f"validation loss {val_loss:.3f} nats/token vs {unigram_ce:.3f} for a unigram model (token frequencies only), "
      f"{np.log(ours.get_vocab_size()):.3f} for uniform guessing")
assert val_loss < unigram_ce, "the GPT must beat a model that knows only token frequencies"
for step, text in read_texts(RUN_DIR / "lm_ref" / "tb")["sample"]:
    print(f"sample at step {step}: {text!r}")

# %% [markdown]
# 驗證損失低於只知道 token 頻率的一元模型(`assert`),離均勻猜測($\ln 2048$)更遠;但 200 步的小模型生成的還只是常用字與標點的拼湊,
# 要學到通順的句子需要多幾個數量級的 token。學習率曲線就是設定裡的暖身(warm-up)加餘弦(cosine)衰減。
#
# **檢查點**:每 50 步存一次,每個檔案用 `helpers.train.save_checkpoint` 原子寫入 —— 先寫到同資料夾的暫存檔、`fsync`,再 `os.replace`
# 換上正式檔名(POSIX 保證 rename 是原子的),所以任何時刻被殺掉,磁碟上要嘛是舊的完整檔案,要嘛是新的完整檔案。
# 只保留最新 3 個(keep-last-k),磁碟用量有上限:

# %%
ckpts = Checkpoints(RUN_DIR / "lm_ref" / "checkpoints")
names = [p.name for p in ckpts.paths()]
print(names, f"{sum(p.stat().st_size for p in ckpts.paths()) / 2**20:.1f} MiB")
assert names == ["ckpt_000200.pt", "ckpt_000150.pt", "ckpt_000100.pt"]
last = load_checkpoint(ckpts.paths()[0])  # weights_only=True: a checkpoint cannot run code when it is loaded
print("a checkpoint holds:", sorted(last), "| loader state:",
      {k: v for k, v in last["loader"].items() if k != "generator"})

# %% [markdown]
# ## 11.4 訓練中斷與恢復機制 · Interrupting and resuming training
#
# 現在做最難的部分。同一個設定再跑一次,當它印出第 160 步時,從筆記本對它送 `SIGKILL`(不能被攔截,就像斷電;
# 最後存的檢查點是第 150 步,位在第一個 epoch 的中間),然後用 `--resume` 重新啟動,跑完全部 200 步,與上面不中斷的執行比較。
#
# 為了看清每一部分狀態的作用,`--resume-level` 讓恢復只還原一部分:
# - `model`:模型、優化器、學習率排程與步數(多數教學程式碼只做到這樣);
# - `rng`:再加上每個行程的亂數狀態(`torch`、`random`;dropout 用到它);
# - `full`:再加上資料載入器(data loader)在這個 epoch 的位置:epoch 開始**前**的 `torch.Generator` 狀態(洗牌由它決定)與已經取了幾個批次。

# %%
killed = run([sys.executable, TRAIN_SCRIPT, lm_cfg_path, "--out-dir", RUN_DIR / "lm_killed"],
             kill_when=rf"^step\s+{KILL_AT}/")
print(f"killed: {killed['killed']}, exit code {killed['returncode']} (-9 = SIGKILL); last line printed: "
      f"{killed['out'].splitlines()[-1]!r}")
print("checkpoints left behind:", [p.name for p in Checkpoints(RUN_DIR / "lm_killed" / "checkpoints").paths()])
assert killed["killed"] and killed["returncode"] == -9
per_epoch = ((len(train_ids) - 1) // lm_cfg.block) // lm_cfg.batch
print(f"one epoch = {per_epoch:,} batches: step {KILL_AT} is in the middle of the first epoch")

reference = load_checkpoint(RUN_DIR / "lm_ref" / "checkpoints" / f"ckpt_{lm_cfg.steps:06d}.pt")
resumed = {}
for level in ("model", "rng", "full"):
    folder = RUN_DIR / f"lm_resume_{level}"
    shutil.copytree(RUN_DIR / "lm_killed", folder)  # each level continues from the same killed run
    out = run([sys.executable, TRAIN_SCRIPT, lm_cfg_path, "--out-dir", folder, "--resume", "--resume-level", level])
    final = load_checkpoint(folder / "checkpoints" / f"ckpt_{lm_cfg.steps:06d}.pt")
    diff = max((final["model"][k] - reference["model"][k]).abs().max().item() for k in reference["model"])
    identical = all(torch.equal(final["model"][k], reference["model"][k]) for k in reference["model"])
    resumed[level] = (final["log"][-1], diff, identical)
    print(out["out"].splitlines()[0])
print(f"\n{'restored':28s}{'final loss':>12s}{'max |Δθ|':>11s}  bit-identical")
print(f"{'(uninterrupted run)':28s}{reference['log'][-1]:12.6f}{0:11.1e}")
for level, (loss, diff, identical) in resumed.items():
    print(f"{ {'model': 'model+optimizer+scheduler', 'rng': '+ RNG states', 'full': '+ data-loader position'}[level]:28s}"
          f"{loss:12.6f}{diff:11.1e}  {identical}")
assert resumed["full"][2] and resumed["full"][0] == reference["log"][-1]
assert not resumed["model"][2] and not resumed["rng"][2]

# %% [markdown]
# 只有第三種**逐位元相同**(`torch.equal` 對每個參數張量)。前兩種的差異不是數值誤差,而是訓練了**不同的東西**:
# - 只還原模型與優化器:dropout 的亂數從頭開始,資料載入器也從 epoch 開頭重新洗牌,於是第 151–200 步看到的是第 1–50 步已經看過的批次;
# - 加上亂數狀態:dropout 對了,但資料仍重複、而該看的批次沒看到;
# - 再加上載入器位置:`DataLoader(shuffle=True, generator=g)` 在每個 epoch 的 `iter()` 時從 `g` 抽出洗牌順序,
#   所以存下 epoch 開始前 `g` 的狀態,恢復時還原它、重新 `iter()`、跳過已經用掉的批次,就得到完全相同的順序。
#
# (第 7 章的 `scripts/train_gpt.py` 走另一條路:每一步的全域批次由 `(seed, step)` 直接決定,沒有載入器狀態要存;代價是放棄了「每個 epoch 每筆資料恰好看一次」。)
#
# 恢復後的 TensorBoard 曲線也要乾淨:重啟的 `SummaryWriter(purge_step=151)` 讓讀取端丟掉被殺掉的執行在第 151 步之後寫過的點,
# 曲線與不中斷的執行一致:

# %%
steps_full, loss_full = read_scalars(RUN_DIR / "lm_resume_full" / "tb")["train/loss"]
assert steps_full == steps_logged and loss_full == losses_logged
print(f"resumed run's curve: {len(steps_full)} points, steps {steps_full[0]}…{steps_full[-1]}, equal to the "
      "uninterrupted run's (asserted)")

# %% [markdown]
# **壞掉的檢查點與換了設定的恢復。** 原子寫入防得了行程被殺,防不了磁碟滿、複製到一半或硬體問題。`Checkpoints.latest`
# 從最新的檔案往回試,讀不出來的就報告並跳過;而設定不同的執行(例如改了學習率)則**拒絕**恢復,並說出哪裡不同 ——
# 兩種情況都不會悄悄從頭訓練:

# %%
broken = RUN_DIR / "lm_broken"
shutil.copytree(RUN_DIR / "lm_ref", broken)
newest = Checkpoints(broken / "checkpoints").paths()[0]
with open(newest, "r+b") as f:
    f.truncate(newest.stat().st_size // 2)  # a copy that stopped half-way
ck = Checkpoints(broken / "checkpoints").latest(lm_cfg)
print(f"→ resumed from {Path(ck['path']).name} (step {ck['step']})")
assert ck["step"] == 150
try:
    Checkpoints(broken / "checkpoints").latest(RunConfig(**{**lm_cfg.to_dict(), "lr": 1e-3}))
except ValueError as e:
    print("ValueError:", str(e)[:230], "…")
try:
    Checkpoints(RUN_DIR / "no_such_run").latest(lm_cfg)
except FileNotFoundError as e:
    print("FileNotFoundError:", e)

# %% [markdown]
# ## 11.5 綜合案例:IMDB 文字分類訓練全流程 · Case study: IMDB text classification end to end
#
# 同一條管線用在分類:5,000 則 IMDB 影評(鏡像資料的 5k 子集),前 3,600 則訓練、接著 400 則驗證、最後 1,000 則測試。

# %% [markdown]
# ### 11.5.1 資料前置處理與Tokenization · Preprocessing and tokenization
#
# 影評裡有 HTML(`<br />`)。清洗後只在**訓練集**上訓練分詞器(驗證與測試集不能參與任何擬合),再看長度分布:

# %%
imdb = load_imdb()
raw_reviews, labels = imdb["text"], np.array(imdb["label"])
print(f"{len(raw_reviews):,} reviews; '<br />' in {np.mean(['<br' in r for r in raw_reviews]):.0%} of them; "
      f"test set {labels[4000:].mean():.1%} positive")
reviews = [clean_text(r) for r in raw_reviews]
split = {"train": slice(0, 3600), "val": slice(3600, 4000), "test": slice(4000, 5000)}
imdb_tok = Tokenizer(models.BPE())
imdb_tok.normalizer = normalizers.Lowercase()
imdb_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
imdb_tok.decoder = decoders.ByteLevel()
imdb_tok.train_from_iterator(reviews[split["train"]], trainers.BpeTrainer(
    vocab_size=IMDB_VOCAB, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False))
encoded = [e.ids for e in imdb_tok.encode_batch(reviews)]
lengths = np.array([len(e) for e in encoded])
print(f"tokens per review: median {np.median(lengths):.0f}, 90th percentile {np.percentile(lengths, 90):.0f}, "
      f"max {lengths.max():,}; {np.mean(lengths > IMDB_MAX_LEN):.0%} are longer than {IMDB_MAX_LEN}")
plt.figure(figsize=(6, 2.8))
plt.hist(np.minimum(lengths, 1500), bins=60)
plt.axvline(IMDB_MAX_LEN, color="C3", ls="--", label=f"保留 {IMDB_MAX_LEN} 個 token")
plt.xlabel("影評長度(token,超過 1,500 併入最後一格)")
plt.ylabel("影評數")
plt.legend()
plt.show()

# %% [markdown]
# 大多數影評比模型能看的 128 個 token 長。截斷時保留**開頭 64 + 結尾 64**(head + tail;Sun 等人 2019 在 IMDB 上發現比只留開頭好):
# 影評常在最後一句下結論。不足的補 `<pad>`,存成 (影評數 × 128) 的 `uint16` 檔,標籤放在說明檔裡:

# %%
pad = imdb_tok.token_to_id("<pad>")
example = head_tail(list(range(300)), IMDB_MAX_LEN, IMDB_HEAD)
assert example[:IMDB_HEAD] == list(range(IMDB_HEAD)) and example[IMDB_HEAD:] == list(range(300 - IMDB_HEAD, 300))
for name, sl in split.items():
    rows_ = np.full((sl.stop - sl.start, IMDB_MAX_LEN), pad, dtype=np.int64)
    for i, ids in enumerate(encoded[sl]):
        ids = head_tail(ids, IMDB_MAX_LEN, IMDB_HEAD)
        rows_[i, :len(ids)] = ids
    write_token_file(RUN_DIR / f"data/imdb_{name}", rows_, vocab_size=imdb_tok.get_vocab_size(), pad_id=pad,
                     labels=labels[sl].tolist())
print({name: open_token_file(RUN_DIR / f"data/imdb_{name}")[0].shape for name in split})

# %% [markdown]
# ### 11.5.2 多GPU 與分散式訓練設置 · Multi-GPU and distributed setup
#
# **同一支** `scripts/train.py`,設定檔裡換成 `task="cls"`,用 `torchrun` 啟動兩個行程:每個行程拿全域批次的一半,
# DDP 在反向傳播時平均梯度。這台機器沒有 GPU,兩個行程用 gloo 後端跑在 2 個 CPU 核心上;在有 8 張 GPU 的機器上,
# 指令只要把 `--nproc_per_node 2` 換成 8(nccl 由腳本自動選用),多機器的指令見 README 的 GPU 一節。

# %%
imdb_cfg = RunConfig(task="cls", train_data=str((RUN_DIR / "data/imdb_train").resolve()),
                     val_data=str((RUN_DIR / "data/imdb_val").resolve()), block=IMDB_MAX_LEN, seed=SEED,
                     **IMDB_CONFIG)
imdb_cfg_path = imdb_cfg.save(RUN_DIR / "imdb.json")
print("torchrun --nproc_per_node 2", TRAIN_SCRIPT, imdb_cfg_path, "--out-dir", RUN_DIR / "imdb_ref")
imdb_ref = launch(torchrun_cmd(TRAIN_SCRIPT, imdb_cfg_path, "--out-dir", RUN_DIR / "imdb_ref", nproc=2), threads=1)
imdb_summary = summary(imdb_ref["out"])
print(f"{imdb_ref['seconds']:.1f} s in all; validation accuracy {imdb_summary['val_acc']:.1%}")

# %% [markdown]
# ### 11.5.3 訓練過程中的監控與中間結果儲存 · Monitoring and saving intermediate results

# %%
sc = read_scalars(RUN_DIR / "imdb_ref" / "tb")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].plot(*sc["train/loss"], label="訓練")
axes[0].plot(*sc["val/loss"], "o-", label="驗證")
axes[0].set_title("交叉熵損失")
axes[0].legend()
axes[1].plot(*sc["val/acc"], "o-")
axes[1].set_title("驗證集準確率")
for ax in axes:
    ax.set_xlabel("步數")
plt.tight_layout()
plt.show()
print("val accuracy by step:", dict(zip(*sc["val/acc"])))
print("checkpoints kept (keep_last=2):", [p.name for p in Checkpoints(RUN_DIR / "imdb_ref" / "checkpoints").paths()])

# %% [markdown]
# ### 11.5.4 訓練中斷與恢復 · Interrupting and resuming
#
# 在分散式訓練中途殺掉**兩個**工作行程和 `torchrun` 本身(整個行程群組),再以同樣的指令加上 `--resume` 重新啟動。
# 檢查點裡有兩個行程各自的亂數狀態;恢復後的參數必須與不中斷的 DDP 執行逐位元相同:

# %%
imdb_killed = run([str(c) for c in torchrun_cmd(TRAIN_SCRIPT, imdb_cfg_path, "--out-dir", RUN_DIR / "imdb_run", nproc=2)],
                  threads=1, kill_when=rf"^step\s+{IMDB_KILL_AT}/")
print(f"killed: {imdb_killed['killed']}; checkpoints left:",
      [p.name for p in Checkpoints(RUN_DIR / "imdb_run" / "checkpoints").paths()])
imdb_resumed = launch(torchrun_cmd(TRAIN_SCRIPT, imdb_cfg_path, "--out-dir", RUN_DIR / "imdb_run", "--resume", nproc=2),
                      threads=1)
a = load_checkpoint(RUN_DIR / "imdb_ref" / "checkpoints" / f"ckpt_{imdb_cfg.steps:06d}.pt")
b = load_checkpoint(RUN_DIR / "imdb_run" / "checkpoints" / f"ckpt_{imdb_cfg.steps:06d}.pt")
assert imdb_killed["killed"]
assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["log"] == b["log"]
print(f"killed at step {IMDB_KILL_AT}, resumed under DDP: all {len(a['model'])} parameter tensors and all "
      f"{len(a['log'])} losses bit-identical to the uninterrupted run (asserted)")

# %% [markdown]
# ### 11.5.5 測試模型性能 · Testing the model
#
# 測試集只在最後用一次。載入最後的檢查點(`weights_only=True`),與在**同樣 3,600 則**訓練影評上的 TF-IDF(1–2 gram)+
# 邏輯迴歸比較 —— 後者是文字分類最該先試的強基準:

# %%
test_tokens, test_meta = open_token_file(RUN_DIR / "data/imdb_test")
model = build_model(imdb_cfg, test_meta)
model.load_state_dict(b["model"])
model.eval()
with torch.no_grad():
    logits = torch.cat([model(torch.from_numpy(test_tokens[i:i + 250].astype(np.int64)))
                        for i in range(0, len(test_tokens), 250)])
p_model = logits.softmax(-1)[:, 1].numpy()
y_test = labels[split["test"]]
t0 = time.perf_counter()
tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=100_000, sublinear_tf=True)
X_train = tfidf.fit_transform(reviews[split["train"]])
lr_model = LogisticRegression(C=10, max_iter=2000).fit(X_train, labels[split["train"]])
p_tfidf = lr_model.predict_proba(tfidf.transform(reviews[split["test"]]))[:, 1]
print(f"TF-IDF + logistic regression: fitted in {time.perf_counter() - t0:.1f} s")
results = {}
print(f"{'model':34s}{'accuracy':>9s}{'precision':>10s}{'recall':>8s}{'F1':>7s}{'ROC AUC':>9s}")
for name, p in (("Transformer (1 layer, 128 tokens)", p_model), ("TF-IDF + logistic regression", p_tfidf)):
    pred = (p > 0.5).astype(int)
    prec, rec, f1, _ = precision_recall_fscore_support(y_test, pred, average="binary")
    results[name] = dict(acc=(pred == y_test).mean(), precision=prec, recall=rec, f1=f1, auc=roc_auc_score(y_test, p))
    print(f"{name:34s}" + "".join(f"{v:{w}.3f}" for v, w in zip(results[name].values(), (9, 10, 8, 7, 9))))
    print("  confusion matrix [[TN FP] [FN TP]]:", confusion_matrix(y_test, pred).tolist())
acc_model, acc_tfidf = (results[k]["acc"] for k in results)
se = np.sqrt(acc_model * (1 - acc_model) / len(y_test))
print(f"accuracy gap {acc_tfidf - acc_model:.3f}; standard error of one accuracy on {len(y_test):,} reviews ±{se:.3f}")
assert acc_tfidf - acc_model > 3 * se, "at this budget the classical baseline wins clearly"
val_tokens, _ = open_token_file(RUN_DIR / "data/imdb_val")
with torch.no_grad():
    val_acc = (model(torch.from_numpy(val_tokens[:].astype(np.int64))).argmax(-1).numpy() == labels[split["val"]]).mean()
assert val_acc == imdb_summary["val_acc"], "the loaded checkpoint must be the model the script evaluated"
print(f"validation accuracy of the loaded checkpoint {val_acc:.4f} == the script's {imdb_summary['val_acc']:.4f}")

# %%
fig, ax = plt.subplots(figsize=(4.5, 4))
for name, p in (("Transformer", p_model), ("TF-IDF + LR", p_tfidf)):
    fpr, tpr, _ = roc_curve(y_test, p)
    ax.plot(fpr, tpr, label=f"{name}(AUC {roc_auc_score(y_test, p):.3f})")
ax.plot([0, 1], [0, 1], ":", color="gray")
ax.set_xlabel("偽陽性率(FPR)")
ax.set_ylabel("真陽性率(TPR)")
ax.set_title("IMDB 測試集 ROC 曲線")
ax.legend()
plt.show()

# %% [markdown]
# **錯誤分析**:模型最有把握卻答錯的三則影評(機率離 0.5 最遠的錯誤),以及 TF-IDF 在這三則上的判斷:

# %%
wrong = np.where((p_model > 0.5) != y_test)[0]
worst = wrong[np.argsort(-np.abs(p_model[wrong] - 0.5))][:3]
test_reviews = reviews[split["test"]]
for i in worst:
    print(f"label {'positive' if y_test[i] else 'negative'}, model P(positive) = {p_model[i]:.2f}, "
          f"TF-IDF {p_tfidf[i]:.2f}, {lengths[4000 + i]} tokens")
    print("   ", test_reviews[i][:260], "…\n")

# %% [markdown]
# 在這個預算下,Transformer **沒有**贏過 TF-IDF + 邏輯迴歸:上表的準確率、F1 與 AUC 都低了一截,準確率的差距超過 1,000 則測試影評抽樣誤差(標準誤)的 3 倍(`assert`)。原因很具體:它只從 3,600 則影評從零學起、只看每則影評 128 個 token(中位數長度的一半)、
# 只訓練 150 步;TF-IDF 看到每則影評的**每一個**詞,而且在小資料上很難過擬合。錯誤分析:三則最有把握的錯誤裡,兩則比 128 個 token 長,
# 中段被截掉;第三則開頭就說「Tim Burton 終於讓我失望」,卻標為正面 —— 先抑後揚的影評與標註本身都難。TF-IDF 在這三則裡也錯了兩則。
# 要贏過這個基準,要嘛用預訓練模型(第 3、12 章的做法),要嘛大幅增加資料與訓練。這一節的重點是**流程**:
# 同一支腳本、同一個設定檔,從清洗到分散式訓練、監控、中斷恢復、評估,每一步都檢查過。

# %% [markdown]
# ## 11.6 本章小結 · Summary
#
# - **資料**:清洗寫成 `datasets` 的 `map`/`filter`,多行程輸出與單行程相同;串流模式讓記憶體與資料量無關;
#   斷詞後的語料存成 `uint16` 記憶體映射檔,隨機讀取不必載入。
# - **分詞器**:位元組層級 BPE 一定能還原原文;WordPiece(bert-base-chinese)會轉小寫、丟空白、產生 `[UNK]`;
#   Rust 的 `tokenizers` 與第 1 章的 Python BPE 結果相同,速度差了上面印出的倍數。
# - **啟動**:一個驗證過的設定檔 + 一支腳本,單行程與 `torchrun` 都不必改;MFU 告訴你硬體用了幾成。
# - **監控**:TensorBoard 事件檔可以讀回來分析;檢查點原子寫入、只保留最新 k 個。
# - **恢復**:模型 + 優化器 + 排程 + 亂數狀態 + 資料載入器位置,缺一不可;在 `SIGKILL` 之後,語言模型與 DDP 分類器都逐位元重現。
#   壞掉的檢查點被跳過,設定不同的恢復被拒絕。
# - **IMDB**:小 Transformer 在這個預算下輸給 TF-IDF —— 強的經典基準永遠要先跑。

# %%
helpers.report(
    11,
    clean_docs=len(ds), map_speedup_2proc=speed[2] / speed[1],
    tokens_per_char_zh_ours=rows[f"ours: byte BPE ({ours.get_vocab_size():,})", "中文"][0],
    tokens_per_char_zh_gpt2=rows["GPT-2 byte BPE (50,257)", "中文"][0],
    rust_vs_python_bpe=rs_cps / py_cps,
    lm_val_loss=ref_summary["val_loss"], lm_tokens_per_s=ref_summary["tokens_per_s"], lm_mfu=mfu,
    resume_model_only_max_diff=resumed["model"][1], resume_rng_max_diff=resumed["rng"][1],
    resume_full_max_diff=resumed["full"][1],
    imdb_acc=acc_model, imdb_f1=results["Transformer (1 layer, 128 tokens)"]["f1"],
    imdb_tfidf_acc=acc_tfidf,
)

# %% [markdown]
# ## 11.7 思考題 · Exercises
#
# **1.** 恢復層級 `rng` 還原了亂數狀態,為什麼結果仍然不同?用 `ResumableLoader` 直接看:第 150 步之後,
# 不中斷的執行與只還原亂數的執行,下一個批次各是哪些樣本?

# %% tags=["answer"]
n_windows = (len(train_ids) - 1) // lm_cfg.block
uninterrupted = ResumableLoader(n_windows, lm_cfg.batch, seed=SEED)
for _ in range(150):
    uninterrupted.next()
state = uninterrupted.state_dict()
next_true = uninterrupted.next()
fresh = ResumableLoader(n_windows, lm_cfg.batch, seed=SEED)  # what `rng` does: a new loader, epoch from the start
restored = ResumableLoader(n_windows, lm_cfg.batch, seed=SEED)
restored.load_state_dict(state)  # what `full` does
print("uninterrupted, batch 151:", next_true[:6].tolist())
print("rng level,     batch 151:", fresh.next()[:6].tolist(), "(= batch 1 of the run, seen before)")
print("full level,    batch 151:", restored.next()[:6].tolist())
assert torch.equal(restored.next(), uninterrupted.next())

# %% [markdown]
# 只還原亂數時,新建的載入器從 epoch 開頭重新洗牌:第 151 步拿到的是第 1 步的批次。dropout 的遮罩雖然對了,資料卻錯了。

# %% [markdown]
# **2.** GPT-2 small(1.24 億參數)用 AdamW 以 float32 訓練,一個檢查點多大?keep-last-3 要預留多少磁碟?

# %% tags=["answer"]
n = 124_439_808
bytes_per_param = 4 + 4 + 4  # weights + Adam's exp_avg + exp_avg_sq, float32
size = n * bytes_per_param
print(f"one checkpoint ≈ {size / 2**30:.2f} GiB; keep-last-3 ≈ {3 * size / 2**30:.1f} GiB "
      f"(+ one more while the next one is being written: {4 * size / 2**30:.1f} GiB)")
ours_size = Checkpoints(RUN_DIR / "lm_ref" / "checkpoints").paths()[0].stat().st_size
n_ours = sum({v.untyped_storage().data_ptr(): v.numel() for v in reference["model"].values()}.values())  # tied: once
print(f"check on this chapter's GPT: {n_ours:,} stored model values x 12 bytes = {n_ours * 12 / 2**20:.2f} MiB, "
      f"file {ours_size / 2**20:.2f} MiB")

# %% [markdown]
# 權重、一階與二階動量各 4 位元組,一個檢查點約 1.4 GiB;保留 3 個,加上寫入中的第 4 個,約 5.6 GiB。
# 本章的小模型檔案大小與這個算法一致(多出的部分是亂數狀態、日誌與共用權重只存一次的差別)。

# %% [markdown]
# **3.**(動手改)第 7 章的 `train_gpt.py` 不存載入器狀態:每個 epoch 的洗牌順序直接由 `(seed, epoch)` 決定。
# 寫一個這樣的「無狀態」取樣器,證明從任何 `(epoch, position)` 開始都與不中斷時相同 —— 檢查點只需要存步數。

# %% tags=["answer"]
def stateless_batch(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    per_epoch = n // batch
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch:(position + 1) * batch]


small_n, small_batch = 100, 16  # 6 batches per epoch
full_run = [stateless_batch(SEED, s, small_n, small_batch) for s in range(20)]
resumed_run = full_run[:9] + [stateless_batch(SEED, s, small_n, small_batch) for s in range(9, 20)]
assert all(torch.equal(a, b) for a, b in zip(full_run, resumed_run))
epoch0 = torch.cat(full_run[:6])
assert len(set(epoch0.tolist())) == 96  # each example at most once per epoch
print("resumed at step 9 (mid-epoch 1): identical batches; epoch 0 covers 96 distinct examples of 100")

# %% [markdown]
# 只要順序是 `(seed, epoch)` 的純函數,恢復時算出 epoch 與位置就好,不必存產生器狀態;
# 代價是換了世界大小(world size)或批次大小時,要確保每個行程仍從同一個全域順序切片。
