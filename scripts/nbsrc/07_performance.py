"""Source of notebooks/07_performance.ipynb (percent format). Build: python scripts/nbsrc/build.py scripts/nbsrc/07_performance.py"""
# %% [markdown]
# # 第 7 章 模型性能最佳化:混合精度訓練與分散式訓練 · Performance: mixed-precision and distributed training
#
# 模型變大之後,單靠一張卡、一種精度就跑不動了。本章做兩件事:用**較低的精度**(混合精度,mixed precision)算得更快、
# 省記憶體;用**多個程序**(資料並行、ZeRO、張量並行、管線並行)分攤計算與記憶體。坊間教學多半只示範腳本「能跑」;
# 本章逐一用 `assert` 證明每種並行方式算出的東西**與單一程序相同**:
#
# 1. 浮點格式逐位元拆解;fp16 梯度下溢(underflow)與損失縮放(loss scaling),自寫的 `GradScaler` 與 PyTorch 的逐步一致;
# 2. 在本機 CPU 上以 `gloo` 後端、2 個程序真正執行 `torchrun`:集合通訊、DDP、ZeRO、張量並行、管線並行;
# 3. 梯度累積(gradient accumulation)何時等於大批次、何時不等(BatchNorm、補齊的文字);
# 4. 一支可以直接帶上叢集的訓練腳本 `scripts/train_gpt.py`(單程序、`torchrun`、多機皆不需改動,可中斷後逐位元續跑)。
#
# 在 GPU 上,同一份程式改用 `nccl` 後端與 fp16/bf16;要調整的數值都寫在設定格裡。

# %%
import copy
import inspect
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer

import helpers
from helpers.bert import BertClassifier, from_pretrained
from helpers.data import length_batches, load_sst2, load_tiny_shakespeare, minilm_path
from helpers.dist import (
    ColumnParallelLinear,
    ParallelMLP,
    RowParallelLinear,
    amp_policy,
    bubble_fraction,
    check_world,
    gpipe_timeline,
    launch,
    make_data,
    make_mlp,
    run_python,
)
from helpers.env import cpu_flags
from helpers.gpt import GPT, CharTokenizer, lm_loss, random_batches
from helpers.optim import accumulate_gradients, split_batch

helpers.set_style()
device = helpers.get_device()
ROOT = Path(helpers.__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="ch07_"))  # checkpoints and logs of the launched runs (not committed)
print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
      f"native bf16: {helpers.bf16_fast(device)}")

# %% [markdown]
# **設定 · Configuration.** 為 2 核 CPU 設定:分散式示範一律是 2 個程序、`gloo` 後端、每個程序 1 條執行緒;
# 註解寫出在 GPU 上可以調高的數值。

# %%
SEED = 0
NPROC = 2  # processes per machine; GPU: the number of GPUs (torchrun --nproc_per_node 8)
BF16_STEPS = 12  # steps of the fp32-vs-bf16 timing (bf16 is very slow without native support); GPU: 200
DDP_STEPS = 100  # DDP-vs-single steps in the worker; GPU: 1_000
GLOBAL_BATCH = 64  # global batch of the DDP demo (a multiple of NPROC)
MICRO_BATCHES = 4  # pipeline micro-batches; GPU: 16
GPT_STEPS = 30  # steps of scripts/train_gpt.py in the demo; GPU: 5_000 (with --n-layer 6 --n-embd 384)
SST_N_STEPS = 10  # optimizer steps of each SST-2 run (batch 32); GPU: 2_000
SST_VAL_N = 200  # SST-2 validation sentences evaluated; GPU: 872
SST_LR = 1e-4
TIMEOUT = 240  # seconds before a launched run is killed

# %% [markdown]
# ## 7.1 混合精度訓練的實現 · Implementing mixed-precision training
#
# 浮點數 = 符號位(sign)+ 指數(exponent)+ 尾數(mantissa)。指數位決定**範圍**,尾數位決定**精度**。
# fp16 有 5 位指數、10 位尾數;bf16(brain float)有 8 位指數(與 fp32 相同的範圍)、只有 7 位尾數。
# 先用 `torch.finfo` 列出三種格式,再親手把位元拆開還原數值,和 PyTorch 的轉換比對。

# %%
rows = []
for dt in (torch.float32, torch.float16, torch.bfloat16):
    fi = torch.finfo(dt)
    rows.append((str(dt).removeprefix("torch."), fi.bits, fi.max, fi.tiny, fi.smallest_normal * fi.eps, fi.eps))
print(f"{'dtype':9s} {'bits':>4s} {'max':>10s} {'min normal':>11s} {'min subnormal':>13s} {'eps (1→next)':>12s}")
for name, bits, mx, tiny, sub, eps in rows:
    print(f"{name:9s} {bits:4d} {mx:10.3g} {tiny:11.3g} {sub:13.3g} {eps:12.3g}")


def decode_bits(x: float, dtype: torch.dtype) -> tuple[int, int, int, float]:
    """(sign, exponent field, mantissa field, value rebuilt by hand) of x stored in fp16 or bf16."""
    exp_bits, man_bits = {torch.float16: (5, 10), torch.bfloat16: (8, 7)}[dtype]
    raw = torch.tensor([x]).to(dtype).view(torch.int16).item() & 0xFFFF
    sign, e, m = raw >> 15, (raw >> man_bits) & ((1 << exp_bits) - 1), raw & ((1 << man_bits) - 1)
    bias = (1 << (exp_bits - 1)) - 1
    value = (m / 2**man_bits) * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2**man_bits) * 2.0 ** (e - bias)
    return sign, e, m, (-1) ** sign * value


for x in (1 / 3, 1000.1, 1e-5, -2.5e-7):
    for dt in (torch.float16, torch.bfloat16):
        s, e, m, v = decode_bits(x, dt)
        assert v == torch.tensor([x]).to(dt).item()  # our decoding = PyTorch's rounding
        print(f"{x:>10g} as {str(dt)[6:]:8s}: sign {s} exponent {e:3d} mantissa {m:4d} → {v:.8g}")
print("fp16(70000) =", torch.tensor(70000.0).half().item(), " bf16(70000) =", torch.tensor(70000.0).bfloat16().item())
print("fp16(1 + 2^-9) =", torch.tensor(1 + 2**-9).half().item(), " bf16(1 + 2^-9) =",
      torch.tensor(1 + 2**-9).bfloat16().item())
assert torch.tensor(70000.0).half().isinf() and torch.tensor(1 + 2**-9).bfloat16().item() == 1.0

# %% [markdown]
# 上面說明了兩種失敗:fp16 的最大值只有 65504(70000 變成 `inf`,溢位 overflow),bf16 範圍夠大但 1 + 2⁻⁹ 被捨入成 1
# (精度不足)。訓練時最常見的是第三種:**梯度太小,在 fp16 裡變成 0**(下溢 underflow)。下面讓一個小模型的梯度
# 落在 1e-9–1e-5 之間(大模型後段層的典型大小),在 fp16 裡算一次反向傳播,數一數有多少梯度消失;再把損失先乘上
# 2¹⁶(損失縮放),反向傳播後在 fp32 裡除回來。這些只是數值示範,在 CPU 的 fp16 張量上就能做。

# %%
torch.manual_seed(SEED)
net32 = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
x_small, y_small = torch.randn(32, 64), torch.randn(32, 1)
TINY = 1e-6  # scales the loss, so every gradient is ~1e-6 of its usual size


def grads_of(model, scale=1.0, dtype=torch.float32):
    m = copy.deepcopy(model).to(dtype)
    loss = F.mse_loss(m(x_small.to(dtype)).float(), y_small) * TINY * scale  # loss in fp32, as under autocast
    loss.backward()
    return torch.cat([p.grad.float().flatten() for p in m.parameters()]) / scale  # unscale in fp32


g_ref, g_fp16 = grads_of(net32), grads_of(net32, dtype=torch.float16)
g_scaled = grads_of(net32, scale=2.0**16, dtype=torch.float16)
zero_fp16 = ((g_fp16 == 0) & (g_ref != 0)).float().mean().item()
zero_scaled = ((g_scaled == 0) & (g_ref != 0)).float().mean().item()
rel = lambda g: ((g - g_ref).norm() / g_ref.norm()).item()
print(f"gradients that underflow to 0 in fp16: {zero_fp16:.1%} (relative error {rel(g_fp16):.3f}); "
      f"with loss scale 2^16: {zero_scaled:.1%} (relative error {rel(g_scaled):.4f})")
assert zero_fp16 > 0.2 and zero_scaled < 0.01 and rel(g_scaled) < 0.01

fig, ax = plt.subplots(figsize=(6, 3))
bins = np.linspace(-13, -4, 50)
ax.hist(np.log10(g_ref.abs().clamp_min(1e-13).numpy()), bins, alpha=0.6, label="fp32 梯度")
ax.axvline(np.log10(torch.finfo(torch.float16).smallest_normal * torch.finfo(torch.float16).eps), color="C3",
           ls="--", label="fp16 最小次正規數")
ax.axvline(np.log10(torch.finfo(torch.float16).tiny), color="C1", ls=":", label="fp16 最小正規數")
ax.set(xlabel="log10 |梯度|", ylabel="個數", title="fp16 表示不了的梯度(紅線左側變成 0)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# 直方圖裡大多數梯度落在 fp16 最小次正規數(紅線)的左側;其餘的也因為上游(輸出層)的梯度先下溢成 0 而跟著消失,
# 所以總共 98.7% 變成 0。乘上 2¹⁶ 之後,全部梯度都落回 fp16 的範圍內,除回來後與 fp32 只差 0.05%。
#
# 實務上不知道該乘多少,所以 `GradScaler` **動態**調整:從 2¹⁶ 開始;若某步梯度出現 `inf`/`NaN`(乘太大而溢位),
# 就**跳過這一步**並把倍數減半;連續 `growth_interval` 步都正常,就加倍。下面先寫出這個邏輯,再與
# `torch.amp.GradScaler` 在同一串步驟上比較(第 3、6 步故意讓梯度溢位):倍數軌跡與最後的參數都必須完全相同。

# %%
class MyGradScaler:
    """The logic of torch.amp.GradScaler: scale the loss, unscale the grads, skip steps with inf/NaN, adapt."""

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.scale_value, self.growth, self.backoff, self.interval = init_scale, growth_factor, backoff_factor, growth_interval
        self.good_steps, self.found_inf = 0, False

    def scale(self, loss):
        return loss * self.scale_value

    def step(self, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        inv = torch.tensor(self.scale_value, dtype=torch.float64).reciprocal().float()
        for g in grads:
            g.mul_(inv)
        self.found_inf = any(not torch.isfinite(g).all() for g in grads)
        if not self.found_inf:
            optimizer.step()

    def update(self):
        if self.found_inf:
            self.scale_value, self.good_steps = self.scale_value * self.backoff, 0
        else:
            self.good_steps += 1
            if self.good_steps == self.interval:
                self.scale_value, self.good_steps = self.scale_value * self.growth, 0


def scaler_run(scaler, steps=8, overflow=(3, 6)):
    torch.manual_seed(SEED)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(steps, 16, 8)
    trace = []
    for t in range(steps):
        x = data[t].clone()
        if t in overflow:
            x[0, 0] = float("inf")  # an overflowing activation, as fp16 gives
        opt.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
        trace.append(scaler.scale_value if isinstance(scaler, MyGradScaler) else scaler.get_scale())
    return trace, torch.cat([p.detach().flatten() for p in model.parameters()])


mine, mine_params = scaler_run(MyGradScaler(growth_interval=2))
theirs, their_params = scaler_run(torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2))
print("scale per step, ours:         ", mine)
print("scale per step, torch.amp:    ", theirs)
print(f"max |param difference| = {(mine_params - their_params).abs().max().item():.1e}")
assert mine == theirs and torch.equal(mine_params, their_params)

# %% [markdown]
# **bf16 自動混合精度(autocast)。** bf16 的範圍與 fp32 相同,不會下溢,所以不需要損失縮放;`torch.autocast` 讓矩陣乘法
# 用 bf16 算,權重與最佳化器狀態仍是 fp32。但它只有在硬體**原生支援** bf16 時才更快:CPU 要有 `avx512_bf16` 或
# `amx_bf16` 指令,GPU 要 Ampere(計算能力 8.0)以上。先偵測,再量:同一個字元級 GPT、同樣的批次,fp32 與 bf16 各訓練
# `BF16_STEPS` 步,比較每步時間與損失曲線。

# %%
flags = cpu_flags() or frozenset()
print("CPU bf16 instructions:", sorted(f for f in flags if "bf16" in f or "amx" in f) or "none",
      "| helpers.bf16_fast:", helpers.bf16_fast(device))
text = load_tiny_shakespeare()
char_tok = CharTokenizer(text)
char_ids = torch.tensor(char_tok.encode(text[:200_000]))


def gpt_run(amp: bool, steps=BF16_STEPS):
    g = helpers.seed_everything(SEED)
    model = GPT(vocab_size=char_tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches, losses = random_batches(char_ids, 64, 16, g), []
    next(batches)
    t0 = time.perf_counter()
    for _, batch in zip(range(steps), batches):
        with helpers.autocast(device, enabled=amp):
            loss = lm_loss(model, batch)  # the loss itself is computed in fp32
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, (time.perf_counter() - t0) / steps


loss_fp32, s_fp32 = gpt_run(False)
loss_bf16, s_bf16 = gpt_run(True)
bf16_speedup = s_fp32 / s_bf16
curve_diff = max(abs(a - b) for a, b in zip(loss_fp32, loss_bf16))
print(f"fp32 {s_fp32 * 1e3:.0f} ms/step, bf16 autocast {s_bf16 * 1e3:.0f} ms/step → speed-up {bf16_speedup:.2f}× "
      f"({'faster' if bf16_speedup > 1 else 'SLOWER'} on this CPU)")
print("loss per step, fp32:", [round(v, 3) for v in loss_fp32])
print("loss per step, bf16:", [round(v, 3) for v in loss_bf16])
print(f"loss after {BF16_STEPS} steps: fp32 {loss_fp32[-1]:.4f}, bf16 {loss_bf16[-1]:.4f}; "
      f"max |difference| along the curve {curve_diff:.4f}")
assert helpers.bf16_fast(device) or bf16_speedup < 1  # no native bf16 → autocast does not pay off here

# %% [markdown]
# 這台機器的 CPU 有 `avx512_bf16`(上面印出的指令),bf16 autocast 比 fp32 快:每步從 46 毫秒降到 29 毫秒,1.58×。
# 在只有 AVX2、沒有原生 bf16 的 CPU 上正好相反:PyTorch 在那種 CPU 上用沒有向量化的慢路徑做 bf16 矩陣乘法,autocast 反而慢很多。
# 損失曲線:前 4 步到小數點後 3 位相同;第 5 步兩者都出現損失尖峰(學習率 3e-3、沒有預熱),fp32 跳到 5.361、
# bf16 跳到 5.149,這就是上面的最大差距 0.21;之後兩條曲線相差不到 0.01,第 12 步為 3.3587 與 3.3549。
# bf16 只有 8 位有效位元,在損失變化劇烈的地方會走出稍微不同的路徑。所以本書一律**依能力選精度**:
# `amp_policy` 在有原生 bf16 的硬體選 bf16,在較舊的 GPU 選 fp16 + `GradScaler`,其他情況用 fp32。
# 下面是訓練腳本與 GPU 讀者會走的同一段程式:在這台機器上選到 bf16(範圍與 fp32 相同,縮放器停用),在沒有原生 bf16 的
# CPU 上是 fp32,在 V100/T4 這類 GPU 上自動變成 fp16 + 損失縮放。

# %%
def amp_train_step(model, batch, opt, scaler, dtype):
    """One step of the precision path amp_policy picked: autocast in `dtype` (if not fp32), GradScaler if fp16."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = lm_loss(model, batch)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    return loss.item()


dtype, use_scaler = amp_policy(device)
print(f"amp_policy({device.type}) → {dtype}, GradScaler {'on' if use_scaler else 'off'}")
for name in ("fp32", "bf16", "fp16"):
    print(f"  --precision {name}: {amp_policy(device, name)}")
if torch.cuda.is_available():
    print("on this GPU auto picks:", amp_policy("cuda"))
g = helpers.seed_everything(SEED)
small = GPT(vocab_size=char_tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
opt = torch.optim.AdamW(small.parameters(), lr=3e-3)
print("3 steps on the chosen path:", [round(amp_train_step(small, b, opt, scaler, dtype), 4)
                                      for _, b in zip(range(3), random_batches(char_ids, 32, 8, g))])

# %% [markdown]
# ## 7.2 多GPU 並行與分散式訓練的實現 · Multi-GPU parallel and distributed training
#
# 並行的方式依「切什麼」分類:
#
# | 方式 | 每個程序持有 | 每步通訊 |
# |---|---|---|
# | 資料並行(DDP) | 完整模型,1/N 的批次 | 梯度 `all_reduce` |
# | ZeRO 第 1 階段 | 完整模型,1/N 的最佳化器狀態 | 梯度 `reduce_scatter` + 參數 `all_gather` |
# | 張量並行(tensor parallel) | 每層 1/N 的權重 | 每層前向、反向各一次 `all_reduce` |
# | 管線並行(pipeline parallel) | 1/N 的層 | 相鄰階段之間送啟動值與梯度 |
#
# 所有示範寫在 `scripts/dist_demo.py`,由 `torchrun` 以 2 個程序**一次**啟動(每次啟動要幾秒);每個程序都用同一個
# 種子自己算一份單程序的參考答案,所以每個比較都是兩個獨立的計算。

# %%
t0 = time.perf_counter()
out = launch(ROOT / "scripts" / "dist_demo.py", "--out", WORK / "dist.json", "--steps", DDP_STEPS, "--batch",
             GLOBAL_BATCH, "--micro", MICRO_BATCHES, "--seed", SEED, nproc=NPROC, timeout=TIMEOUT)
demo = json.loads((WORK / "dist.json").read_text())
launch_seconds = time.perf_counter() - t0
print(out.strip().splitlines()[-1], f"| {NPROC} processes, {launch_seconds:.1f} s including start-up")

# %% [markdown]
# ### 7.2.1 分散式訓練流程與常規配置方案 · The distributed-training workflow and common configurations
#
# 一個分散式作業由 `world_size` 個程序組成,每個有唯一的 `rank`(0 … world_size − 1);同一台機器上的編號是
# `local_rank`(通常對應第幾張 GPU)。程序呼叫 `dist.init_process_group(backend)` 加入**程序組**(process group):
# GPU 用 `nccl`,CPU 用 `gloo`。它們怎麼找到彼此?`torchrun` 替每個程序設好環境變數(rank、world size、
# 會合位址 `MASTER_ADDR:MASTER_PORT`),`init_process_group` 讀取它們。以下是 2 個程序實際看到的環境變數:

# %%
for line in demo["collectives"]["env"]:
    print(line)

# %% [markdown]
# 四種**集合通訊**(collectives)是所有並行方式的積木。每個 rank 的 `x` 不同(rank r 持有 `[1, 2] × (r + 1)`):
# `all_reduce` 把所有 rank 相加、結果人人都有;`all_gather` 把每個 rank 的張量接起來;`broadcast` 把 rank 0 的複製給所有人;
# `reduce_scatter` 先相加、再把結果切開,rank r 只留第 r 段(ZeRO 用的正是它)。

# %%
for line in demo["collectives"]["lines"]:
    print(line)
world = demo["world_size"]
ref_all_reduce = sum(torch.tensor([1.0, 2.0]) * (r + 1) for r in range(world)).tolist()
assert all(f"all_reduce={ref_all_reduce}" in line for line in demo["collectives"]["lines"])

# %% [markdown]
# **啟動方式。** 單機多卡:`torchrun --standalone --nproc_per_node 8 train.py`。多機時,每台機器執行同一行指令,
# 只要指定機器數與一個會合端點(rendezvous endpoint,任選一台機器的位址);兩台各有 8 張 GPU 的機器:
#
# ```bash
# # on BOTH machines (HOST0 = the address of either one, reachable from the other)
# torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 --rdzv-id gpt1 \
#     scripts/train_gpt.py --steps 5000 --batch 512 --n-layer 6 --n-embd 384 --precision auto
# ```
#
# 這樣 world size = 16,rank 0–7 在一台、8–15 在另一台;腳本本身不需修改。本章的程式用 `helpers.dist.launch`
# 從筆記本啟動 `torchrun`:自動挑一個空閒的連接埠、設 `OMP_NUM_THREADS=1`、有逾時,任何一個 rank 失敗都會把它的
# stderr 顯示在錯誤訊息裡。不合法的設定在啟動前就會被擋下:

# %%
for bad in (dict(world_size=3, batch=64), dict(world_size=2, rank=2), dict(world_size=3, heads=4)):
    try:
        check_world(**bad)
    except ValueError as e:
        print(f"check_world({bad}) → ValueError: {e}")

# %% [markdown]
# ### 7.2.2 Data Parallel 方案 · Data parallelism
#
# **分散式資料並行**(`DistributedDataParallel`, DDP):每個程序持有完整模型,`DistributedSampler` 讓每個 rank 拿到
# 全域批次的一半;反向傳播時 DDP 把梯度分桶(bucket)做 `all_reduce` 取平均,於是每個 rank 的參數更新都與
# 「用整個全域批次訓練一個程序」相同。下面是 DDP 與單程序(同樣的全域批次、SGD + momentum)訓練後參數的最大差距:

# %%
print(f"{'step':>5s} {'float64':>10s} {'float32':>10s}")
for step in demo["ddp_fp64"]["diffs"]:
    print(f"{step:>5s} {demo['ddp_fp64']['diffs'][step]:10.1e} {demo['ddp_fp32']['diffs'][step]:10.1e}")
ddp_fp64_diff = max(demo["ddp_fp64"]["diffs"].values())
ddp_fp32_diff = demo["ddp_fp32"]["diffs"][str(DDP_STEPS)]
assert ddp_fp64_diff < 1e-12  # DDP == single process (float64)
assert demo["ddp_fp32"]["diffs"]["1"] < 1e-6

# %% [markdown]
# 在 float64 裡差距一直停在 1e-16 附近(第 100 步 1.1e-16):DDP 在數學上**就是**大批次的單程序訓練。在 float32 裡
# 第一步差 7.5e-9,不是 0:兩個 rank 各自平均再相加,和一次把 64 個樣本平均,加法順序不同,捨入誤差就不同。在這個 tanh 小模型上,
# 第 100 步時 float32 的差距仍只有 4.5e-8;本書備忘錄在一個 CNN 上量到 momentum 把這種誤差混沌地放大
# (第 50 步 1.6e-4、第 100 步 1.3e-2),所以要驗證 DDP 的正確性,請用 float64,或只比前幾步。
#
# **速度呢?** 在只有 2 個核心的機器上,「2 個程序 × 1 條執行緒」不會比「1 個程序 × 2 條執行緒」快:計算量一樣,
# 還多了通訊。同樣的 100 步,在這個程序裡計時(DDP 的時間由 rank 0 在訓練迴圈裡量,不含啟動):

# %%
def single_seconds(threads, steps=DDP_STEPS):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    ds, model = make_data(GLOBAL_BATCH * steps), make_mlp(SEED)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t0 = time.perf_counter()
    for t in range(steps):
        x, y = ds[t * GLOBAL_BATCH:(t + 1) * GLOBAL_BATCH]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    torch.set_num_threads(old)
    return time.perf_counter() - t0


ddp_seconds = demo["ddp_fp32"]["ddp_seconds"]
one_proc_2t, one_proc_1t = single_seconds(2), single_seconds(1)
print(f"{DDP_STEPS} steps: DDP 2 processes × 1 thread {ddp_seconds:.2f} s | 1 process × 2 threads "
      f"{one_proc_2t:.2f} s | 1 process × 1 thread {one_proc_1t:.2f} s")

# %% [markdown]
# 這裡 DDP 反而最慢(上面印出的秒數):模型很小,單一程序每步只要不到 2 毫秒,DDP 每步的 `all_reduce` 與程序間同步
# 比計算本身還貴;這麼小的矩陣,多一條執行緒也沒有幫助(這次 2 條執行緒甚至比 1 條慢)。在真正的多張 GPU 上,每張卡有自己的算力,通訊又與反向傳播重疊,DDP 才帶來接近線性的加速。
#
# **為什麼不用 `DataParallel`?** `nn.DataParallel` 是單程序多執行緒:每一步都把模型從 GPU 0 **複製**到其他卡、
# 把輸入切開送出、再把輸出收回 GPU 0 算損失,受 Python GIL 限制,也不能跨機器。PyTorch 官方文件因此建議一律用 DDP。
# 以本節的模型為例,DataParallel 每步要多送一份完整參數給每張其他卡:

# %%
param_bytes = demo["zero"]["param_bytes"]
print(f"parameters: {param_bytes:,} bytes; DataParallel broadcasts them to each of the other GPUs every step "
      f"(+{param_bytes * (NPROC - 1):,} bytes/step at {NPROC} GPUs); DDP sends only the gradients once "
      f"(all_reduce) and never copies the model after the start")

# %% [markdown]
# **ZeRO 第 1 階段。** DDP 的每個 rank 都存一份完整的 AdamW 狀態(每個參數 2 個 fp32 動量),這是參數本身的 2 倍。
# ZeRO(Zero Redundancy Optimizer)讓每個 rank 只存、只更新自己那一份參數的狀態,更新完再 `all_gather` 參數。
# `torch.distributed.optim.ZeroRedundancyOptimizer` 就是第 1 階段;它以**整個參數張量**為單位分配,所以兩邊不會剛好一半:

# %%
z = demo["zero"]
print(f"AdamW state bytes per rank: DDP {z['adamw_bytes']} | ZeRO-1 {z['zero_bytes']} "
      f"→ {max(z['zero_bytes']) / max(z['adamw_bytes']):.1%} of DDP on the fullest rank")
print(f"max |param ZeRO − param DDP| after 20 AdamW steps (float64): {z['max_diff']:.1e}")
zero_diff = z["max_diff"]
zero_ratio = max(z["zero_bytes"]) / max(z["adamw_bytes"])
assert zero_diff < 1e-12  # ZeRO == DDP
assert zero_ratio < 0.6 and sum(z["zero_bytes"]) == z["adamw_bytes"][0]  # the state is split, none lost

# %% [markdown]
# **一支可以帶上叢集的訓練腳本。** `scripts/train_gpt.py` 把本章的東西組在一起(第 11 章會再用它):單程序直接
# `python` 執行;在 `torchrun` 下自動加入程序組、包成 DDP(CPU 用 gloo,GPU 用 nccl);每一步的**全域批次**由
# (種子, 步數)決定,每個 rank 取自己的一段,所以不論幾個程序,看到的資料都一樣;每 `--save-every` 步以原子方式
# 寫入檢查點(暫存檔 + `os.replace`),內容可以用 `weights_only=True` 讀回;`--resume` 還原模型、最佳化器、排程器、
# `GradScaler`、每個 rank 的亂數狀態與資料位置。它的選項:

# %%
print(run_python(ROOT / "scripts" / "train_gpt.py", "--help", timeout=TIMEOUT))

# %% [markdown]
# 先單程序訓練 `GPT_STEPS` 步;再用 `--stop-after` 模擬在中途被中斷,接著 `--resume` 續跑到底;最後用 `torchrun`
# 以 2 個程序跑同樣的設定。這幾次都加上 `--precision fp32`:要比較的是程序數,而預設的 `--precision auto`
# 在有原生 bf16 的機器上會選 bf16,它只有 8 位有效位元,捨入誤差會蓋過加總順序造成的差異。

# %%
# float32 on every machine: these runs compare 1 vs 2 processes, and bf16 rounding would swamp that difference
common = ["--steps", GPT_STEPS, "--save-every", 10, "--seed", SEED, "--eval-batches", 4, "--precision", "fp32"]
print(run_python(ROOT / "scripts" / "train_gpt.py", *common, "--out-dir", WORK / "single", timeout=TIMEOUT))
print(run_python(ROOT / "scripts" / "train_gpt.py", *common, "--out-dir", WORK / "resumed", "--stop-after", 20,
                 timeout=TIMEOUT).strip().splitlines()[-1])
print(run_python(ROOT / "scripts" / "train_gpt.py", *common, "--out-dir", WORK / "resumed", "--resume",
                 timeout=TIMEOUT).strip().splitlines()[-1])
print(launch(ROOT / "scripts" / "train_gpt.py", *common, "--out-dir", WORK / "ddp", nproc=NPROC, timeout=TIMEOUT))

# %%
ck = {k: helpers.load_checkpoint(WORK / k / "last.pt") for k in ("single", "resumed", "ddp")}
resume_diff = max((ck["single"]["model"][k] - ck["resumed"]["model"][k]).abs().max().item() for k in ck["single"]["model"])
gpt_ddp_diff = max((ck["single"]["model"][k] - ck["ddp"]["model"][k]).abs().max().item() for k in ck["single"]["model"])
print(f"checkpoint keys: {sorted(ck['single'])}")
print(f"interrupted at step 20 + resumed vs uninterrupted: max |param difference| = {resume_diff}")
print(f"torchrun {NPROC} processes vs 1 process after {GPT_STEPS} AdamW steps (float32): {gpt_ddp_diff:.1e}")
assert resume_diff == 0.0  # bit-identical resume
assert gpt_ddp_diff < 1e-3

# %% [markdown]
# 續跑的結果與不中斷的結果**逐位元相同**(差距 0.0),因為檢查點存了亂數狀態,而資料位置就是步數。2 個程序與 1 個程序
# 則相差 9.3e-6:float32 捨入誤差經過 30 步 AdamW 的累積(加總順序不同,原因同上)。
#
# ### 7.2.3 Model Parallel 方案 · Model parallelism
#
# 模型大到一張卡放不下時,就得把**模型本身**切開。**張量並行**(Megatron-LM 的做法):MLP 的第一層按**輸出**切
# (column parallel,每個 rank 算一半的隱藏單元,啟動函數可以各自算),第二層按**輸入**切(row parallel,每個 rank
# 得到部分和),最後一次 `all_reduce` 相加——前向只通訊一次。注意力按**頭**切:每個 rank 算自己的幾個頭,輸出投影
# 同樣按輸入切。`helpers.dist.ParallelMLP` 的全部程式:

# %%
print(inspect.getsource(ParallelMLP))

# %% [markdown]
# `CopyToParallel`(前向恆等、反向 `all_reduce`)與 `AllReduceSum`(前向 `all_reduce`、反向恆等)是 Megatron 論文中的
# `f` 與 `g`。以下是 2 個程序上的張量並行 MLP 與注意力,和同一程序中未切分的 `nn.Sequential(fc1, GELU, fc2)`、
# `nn.MultiheadAttention` 的最大差距(float64;輸出、對輸入的梯度、每個 rank 那一片權重的梯度),以及和 PyTorch 內建
# `torch.distributed.tensor.parallel`(`ColwiseParallel` + `RowwiseParallel`)的比較:

# %%
tp = demo["tp"]
for k in ("mlp_out", "mlp_grad_x", "mlp_grad_w1", "mlp_grad_w2", "att_out", "att_grad_x", "att_grad_proj"):
    print(f"{k:14s} max |tensor parallel − unsplit| per rank: {[f'{v:.1e}' for v in tp[k]]}")
print(f"MLP weights per rank {tp['weights_per_rank']:,} of {tp['weights_full']:,}; "
      f"built-in DTensor MLP vs ours: {tp['builtin_vs_hand']:.1e}")
tp_mlp_diff = max(max(tp[k]) for k in ("mlp_out", "mlp_grad_x", "mlp_grad_w1", "mlp_grad_w2"))
tp_att_diff = max(max(tp[k]) for k in ("att_out", "att_grad_x", "att_grad_proj"))
assert tp_mlp_diff < 1e-12 and tp_att_diff < 1e-12  # tensor-parallel MLP and attention == unsplit
assert tp["builtin_vs_hand"] < 1e-12

# %% [markdown]
# **管線並行**(pipeline parallel):rank 0 放前兩層,rank 1 放後兩層和損失;兩個階段之間用 `send`/`recv` 傳啟動值
# (前向)與梯度(反向)。若整批一次送,另一個階段就只能等;GPipe 把批次切成 `MICRO_BATCHES` 個微批次
# (micro-batch),先做完所有前向、再做所有反向,讓階段重疊。每個微批次的損失乘上它佔全批的比例,梯度就與未切分的
# 模型一次處理整批相同:

# %%
pipe_diff = max(demo["pipeline"]["grad_diff"])
print(f"max |grad pipeline − grad unsplit| per stage: {demo['pipeline']['grad_diff']}")
assert pipe_diff < 1e-12  # pipeline gradients == unsplit
for m in (1, 4, 8, 16):
    print(f"{NPROC} stages, {m:2d} micro-batches: bubble (idle) fraction {bubble_fraction(NPROC, m):.1%}")

fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
for s, t, kind, m in gpipe_timeline(NPROC, MICRO_BATCHES):
    axes[0].barh(s, 1, left=t, color="C0" if kind == "F" else "C1", edgecolor="white")
    axes[0].text(t + 0.5, s, f"{kind}{m}", ha="center", va="center", color="white", fontsize=8)
axes[0].set(yticks=range(NPROC), yticklabels=[f"階段 {s}" for s in range(NPROC)], xlabel="時間格",
            title=f"GPipe 排程(空白 = 氣泡 {bubble_fraction(NPROC, MICRO_BATCHES):.0%})")
for s, events in enumerate(demo["pipeline"]["events"]):
    for kind, _, a, b in events:
        axes[1].barh(s, (b - a) * 1e3, left=a * 1e3, color="C0" if kind == "F" else "C1", edgecolor="white")
axes[1].set(yticks=range(NPROC), yticklabels=[f"rank {s}" for s in range(NPROC)], xlabel="毫秒",
            title="實測:2 個程序的前向(藍)與反向(橘)")
axes[0].invert_yaxis()
axes[1].invert_yaxis()
plt.tight_layout()
plt.show()

# %% [markdown]
# 氣泡比例是 (p − 1)/(m + p − 1):p 個階段、m 個微批次。微批次越多,閒置越少,但每個微批次越小、矩陣乘法越沒效率。
# 實測的時間軸上,階段 1 要等階段 0 送來第一個微批次才開始,反向則反過來——正是左圖的形狀。PyTorch 也有內建的
# `torch.distributed.pipelining`(`ScheduleGPipe`、`Schedule1F1B`);本章只用手寫版本,它的排程在圖上一目了然。
#
# ## 7.3 梯度累積的實現 · Implementing gradient accumulation
#
# 記憶體只放得下 8 個樣本,卻想要 32 的批次?把 32 拆成 4 個微批次,各自反向傳播、讓梯度在 `.grad` 裡**累加**,
# 4 次之後才更新一次。
#
# ### 7.3.1 梯度累積初步實現 · A first gradient-accumulation implementation
#
# 關鍵是每個微批次的損失要**除以累積步數**,這樣累加起來才是大批次損失的平均,而不是總和:

# %%
def mlp_with(norm):
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(16, 32), norm(32), nn.ReLU(), nn.Linear(32, 3))


torch.manual_seed(SEED)
xb, yb = torch.randn(32, 16), torch.randint(0, 3, (32,))


def grad_vector(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def big_batch_grad(norm):
    model = mlp_with(norm)
    F.cross_entropy(model(xb), yb).backward()
    return grad_vector(model)


def accumulated_grad(norm, accum=4, divide=True):
    model = mlp_with(norm)
    for xm, ym in zip(xb.chunk(accum), yb.chunk(accum)):
        loss = F.cross_entropy(model(xm), ym)
        (loss / accum if divide else loss).backward()  # .grad adds up over the micro-batches
    return grad_vector(model)


ln_diff = (accumulated_grad(nn.LayerNorm) - big_batch_grad(nn.LayerNorm)).abs().max().item()
no_div = (accumulated_grad(nn.LayerNorm, divide=False) - big_batch_grad(nn.LayerNorm)).abs().max().item()
print(f"LayerNorm MLP, 4 × 8 accumulated vs batch 32: max |grad difference| {ln_diff:.1e}; "
      f"forgetting to divide by 4: {no_div:.1e}")
assert ln_diff < 1e-6 and no_div > 1e-3

# %% [markdown]
# 在 DDP 下還有一個細節:每次 `backward()` 都會觸發梯度的 `all_reduce`,但前 3 個微批次的同步都是多餘的。把它們包在
# `model.no_sync()` 裡,只有最後一個微批次才通訊。`dist_demo.py` 在 DDP 上裝了一個計數用的通訊鉤子(comm hook):

# %%
ns = demo["no_sync"]
print(f"one optimizer step of 4 micro-batches: all_reduce every micro-batch {ns['counts']['every']['n']} calls, "
      f"{ns['counts']['every']['bytes']:,} bytes | with no_sync {ns['counts']['no_sync']['n']} call, "
      f"{ns['counts']['no_sync']['bytes']:,} bytes; gradients differ by {ns['grad_diff']:.1e}")
assert ns["counts"]["no_sync"]["bytes"] * 4 == ns["counts"]["every"]["bytes"] and ns["grad_diff"] < 1e-6

# %% [markdown]
# ### 7.3.2 小量訓練中的梯度累積 · Gradient accumulation with small batches
#
# 累積等於大批次,前提是**每個樣本的損失與其他樣本無關**。LayerNorm 只在單一樣本內做正規化,所以上面相等;
# BatchNorm 用**整個批次**的平均與變異數,8 個樣本的統計量和 32 個的不同,累積就不再等於大批次:

# %%
bn_diff = (accumulated_grad(nn.BatchNorm1d) - big_batch_grad(nn.BatchNorm1d)).abs().max().item()
print(f"BatchNorm MLP, 4 × 8 accumulated vs batch 32: max |grad difference| {bn_diff:.1e} "
      f"(LayerNorm: {ln_diff:.1e})")
assert bn_diff > 1000 * ln_diff

# %% [markdown]
# 文字還有第二個陷阱:**補齊**(padding)。語言模型的損失是「所有真實 token 的平均」。若每個微批次先各自平均、再除以
# 累積步數,token 少的微批次就被放大了。正確做法是每個微批次回傳損失**總和**,最後除以全部微批次的真實 token 數——
# 第 9 章的 `helpers.optim.accumulate_gradients` 就這麼做:

# %%
torch.manual_seed(SEED)
lengths = torch.tensor([3, 5, 16, 16, 2, 4, 12, 6])  # very different lengths, so micro-batches hold unequal tokens
ids = torch.randint(1, 50, (8, 16))
labels = torch.where(torch.arange(16) < lengths[:, None], torch.randint(0, 50, (8, 16)), -100)  # -100 = padding
tiny_lm = lambda: (torch.manual_seed(SEED), nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50)))[1]


def token_loss_sum(model, mb):
    return F.cross_entropy(model(mb[0]).flatten(0, 1), mb[1].flatten(), ignore_index=-100, reduction="sum")


full_lm = tiny_lm()
(token_loss_sum(full_lm, (ids, labels)) / (labels != -100).sum()).backward()
naive_lm = tiny_lm()
for mb in split_batch((ids, labels), 2):
    (F.cross_entropy(naive_lm(mb[0]).flatten(0, 1), mb[1].flatten(), ignore_index=-100) / 4).backward()
weighted_lm = tiny_lm()
accumulate_gradients(weighted_lm, split_batch((ids, labels), 2), token_loss_sum, lambda mb: (mb[1] != -100).sum())
naive_diff = (grad_vector(naive_lm) - grad_vector(full_lm)).abs().max().item()
token_diff = (grad_vector(weighted_lm) - grad_vector(full_lm)).abs().max().item()
print(f"padded LM batch of 8 as 4 × 2: mean of micro-batch means {naive_diff:.1e} off; token-weighted {token_diff:.1e}")
assert token_diff < 1e-6 and naive_diff > 1e-4

# %% [markdown]
# ### 7.3.3 梯度累積處理文字分類任務 · Gradient accumulation for text classification
#
# 最後把梯度累積用在真正的任務上:第 3 章的 all-MiniLM-L6-v2 + 平均池化分類頭,做 SST-2 情感分類。同樣的句子、
# 同樣的步數,一邊每步一個 32 句的批次,一邊每步 4 個 8 句的微批次。批次依長度分桶(`length_batches`),每個 32 句的
# 批次再切成 4 份,所以兩邊看到的句子完全相同。為了讓比較只剩「累積」這一個差別,關掉 dropout、凍結詞向量。

# %%
tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
minilm = from_pretrained()
sst = load_sst2()
train_ds = sst["train"].shuffle(seed=SEED).select(range(SST_N_STEPS * 32))
val_ds = sst["validation"].select(range(SST_VAL_N))
encode = lambda texts: tok(list(texts), truncation=True, max_length=64)["input_ids"]
sst_batches = length_batches(encode(train_ds["sentence"]), torch.tensor(train_ds["label"]), 32, shuffle_seed=SEED)
val_batches = length_batches(encode(val_ds["sentence"]), torch.tensor(val_ds["label"]), 100)


def new_classifier():
    torch.manual_seed(SEED)
    clf = BertClassifier(copy.deepcopy(minilm), num_labels=2, pooling="mean", dropout=0.0)
    for m in clf.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    clf.bert.embeddings.word.weight.requires_grad_(False)
    return clf


def sst_train(accum):
    clf = new_classifier()
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=SST_LR)
    losses, first_grad, t0 = [], None, time.perf_counter()
    for ids_b, am_b, y_b in sst_batches:
        opt.zero_grad()
        total = 0.0
        for ids_m, am_m, y_m in zip(ids_b.chunk(accum), am_b.chunk(accum), y_b.chunk(accum)):
            keep = am_m.sum(0) > 0  # trim the padding columns this micro-batch does not need
            loss = F.cross_entropy(clf(ids_m[:, keep], am_m[:, keep]), y_m) / accum
            loss.backward()
            total += loss.item()
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten() for p in clf.parameters() if p.grad is not None])
        opt.step()
        losses.append(total)
    clf.eval()
    with torch.no_grad():
        acc = sum((clf(i, a).argmax(-1) == y).sum().item() for i, a, y in val_batches) / SST_VAL_N
    return losses, first_grad, acc, time.perf_counter() - t0


loss_32, grad_32, acc_32, sec_32 = sst_train(1)
loss_8x4, grad_8x4, acc_8x4, sec_8x4 = sst_train(4)
sst_grad_diff = (grad_32 - grad_8x4).abs().max().item()
sst_curve_diff = max(abs(a - b) for a, b in zip(loss_32, loss_8x4))
print(f"first step: max |grad(32) − grad(8×4)| = {sst_grad_diff:.1e} (largest gradient {grad_32.abs().max():.1e})")
print(f"batch 32: {sec_32:.1f} s, final loss {loss_32[-1]:.4f}, val acc {acc_32:.3f} | 8 × 4: {sec_8x4:.1f} s, "
      f"final loss {loss_8x4[-1]:.4f}, val acc {acc_8x4:.3f} | max curve difference {sst_curve_diff:.1e}")
assert sst_grad_diff < 1e-5 and sst_curve_diff < 1e-3

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, SST_N_STEPS + 1), loss_32, "o-", label="批次 32")
ax.plot(range(1, SST_N_STEPS + 1), loss_8x4, "x--", label="批次 8 × 累積 4")
ax.set(xlabel="最佳化步數", ylabel="訓練損失", title="SST-2:梯度累積與大批次的損失曲線")
ax.legend()
plt.show()

# %% [markdown]
# 兩條曲線重合(最大差距 6.0e-8,第一步的梯度差 3.0e-8):梯度累積用 1/4 的啟動值記憶體,換來與大批次相同的訓練,代價是時間(4 次較小的前向、反向,
# 上面印出的秒數)。步數很少,準確率只說明模型在學,不代表充分訓練的水準。
#
# ## 7.4 本章小結 · Summary
#
# - **混合精度**:親手拆解 fp16/bf16 的位元,與 PyTorch 的轉換一致;fp16 讓小模型 98.7% 的梯度下溢成 0(相對誤差 0.72),
#   損失縮放 2¹⁶ 把它們全部救回(相對誤差 0.0005);自寫的 `GradScaler` 與 `torch.amp.GradScaler` 的倍數軌跡和參數完全相同。
#   本機有原生 bf16(`avx512_bf16`),bf16 autocast 比 fp32 快 1.58×,12 步的損失曲線除了第 5 步的尖峰(差 0.21)之外
#   相差不到 0.01;沒有原生 bf16 的 CPU 上 autocast 反而更慢,所以依能力選精度:`amp_policy` 在這裡選 bf16,
#   在沒有原生 bf16 的 CPU 上選 fp32,在舊 GPU 上選 fp16 + `GradScaler`。
# - **資料並行**:DDP 與單程序在 float64 下相差 1.1e-16(100 步),float32 下 4.5e-8;ZeRO-1 與 DDP 參數完全相同(0.0),
#   最滿的 rank 只存 DDP 51.7% 的最佳化器狀態;2 個 CPU 核心上 DDP 比單程序 2 執行緒慢。
# - **模型並行**:手寫的張量並行 MLP、注意力與未切分模組相差 ≤ 7.1e-15,與 PyTorch 內建 DTensor 版本相差 5.6e-16;
#   2 階段 GPipe 的梯度與未切分模型相差 4.2e-17,4 個微批次時氣泡佔 20%。
# - **梯度累積**:LayerNorm 模型 4 × 8 與 32 相差 3.0e-8,BatchNorm 相差 8.0e-2;補齊的文字若不按 token 數加權,
#   梯度差 6.5e-2;`no_sync` 把一步的梯度通訊從 4 次 443,552 位元組減為 1 次 110,888 位元組;SST-2 上 8 × 4 與 32 的損失
#   曲線相差 6.0e-8,驗證準確率相同(10 步,都是 0.580)。
# - `scripts/train_gpt.py`:單程序、`torchrun`、多機同一支腳本;中斷後續跑與不中斷的參數相差 0.0,2 個程序與 1 個程序
#   30 步後相差 9.3e-6(float32 捨入;這個比較固定用 `--precision fp32`)。

# %%
helpers.report(7, bf16_speedup=bf16_speedup, bf16_curve_diff=curve_diff, fp16_underflow_frac=zero_fp16,
               ddp_fp64_diff=ddp_fp64_diff, ddp_fp32_diff=ddp_fp32_diff, zero_diff=zero_diff,
               zero_state_ratio=zero_ratio, tp_mlp_diff=tp_mlp_diff, tp_att_diff=tp_att_diff, pipeline_diff=pipe_diff,
               resume_diff=resume_diff, sst_accum_curve_diff=sst_curve_diff, sst_acc_32=acc_32, sst_acc_8x4=acc_8x4)

# %% [markdown]
# ## 7.5 思考題 · Exercises
#
# 1. 一個 4 階段的管線,要讓氣泡比例低於 10%,至少需要幾個微批次?
# 2. 一個 70 億參數的模型用 AdamW 與混合精度訓練(fp16/bf16 權重與梯度各 2 位元組,fp32 主權重與兩個動量共 12 位元組),
#    在 8 張 GPU 上,DDP、ZeRO-1、ZeRO-2、ZeRO-3 每張卡各需要多少記憶體(不計啟動值)?
# 3. (動手做)不啟動任何程序,用 `ColumnParallelLinear` 與 `RowParallelLinear` 在同一個程序裡模擬 **4 路**張量並行的
#    MLP:把 4 個 rank 的部分和相加,和未切分的 MLP 比較。

# %% tags=["answer"]
p = 4
m_needed = next(m for m in range(1, 1000) if bubble_fraction(p, m) < 0.10)
print(f"{p} stages: {m_needed} micro-batches give bubble {bubble_fraction(p, m_needed):.1%} "
      f"({m_needed - 1} give {bubble_fraction(p, m_needed - 1):.1%})")
# Conclusion: (p-1)/(m+p-1) < 0.1 needs m > 9(p-1) = 27, so 28 micro-batches.

# %% tags=["answer"]
n_params, gpus = 7e9, 8
for name, (w, g_, s) in {"DDP": (2, 2, 12), "ZeRO-1": (2, 2, 12 / gpus), "ZeRO-2": (2, 2 / gpus, 12 / gpus),
                         "ZeRO-3": (2 / gpus, 2 / gpus, 12 / gpus)}.items():
    print(f"{name:7s} {n_params * (w + g_ + s) / 2**30:6.1f} GiB per GPU")
# Conclusion: 16 bytes/parameter (104 GiB) fit no GPU under DDP; ZeRO-3 shards all of it (13 GiB per GPU at 8 GPUs).

# %% tags=["answer"]
torch.manual_seed(SEED)
fc1_full, fc2_full = nn.Linear(32, 128), nn.Linear(128, 32)
x4 = torch.randn(5, 32)
with torch.no_grad():
    ref4 = fc2_full(F.gelu(fc1_full(x4)))
    shards = [(ColumnParallelLinear(fc1_full, r, 4), RowParallelLinear(fc2_full, r, 4)) for r in range(4)]
    sim4 = sum(row(F.gelu(col(x4))) for col, row in shards)  # what all_reduce would add up
print(f"4-way simulated tensor-parallel MLP vs unsplit: max |difference| {(sim4 - ref4).abs().max().item():.1e}")
assert (sim4 - ref4).abs().max().item() < 1e-5
# Conclusion: each rank's partial product of fc2 sums to the full output, so one all_reduce is all the forward needs.
