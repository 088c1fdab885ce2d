"""Source of notebooks/08_contrastive.ipynb (percent format). Build: python scripts/nbsrc/build.py scripts/nbsrc/08_contrastive.py"""
# %% [markdown]
# # 第 8 章 對比學習與對抗訓練 · Contrastive learning and adversarial training
#
# 三種常被當成口號的技術,本章逐一讓它們**真的動起來**,並且和「若輸了就毫無意義」的基準比:
#
# 1. **對比學習(contrastive learning)**:SimCLR 不看標籤,只學「同一張圖的兩個擴增視角要靠近、別的圖要遠離」。
#    它學到的特徵必須勝過原始像素,也必須勝過**同架構的隨機編碼器**(隨機卷積網路的特徵本身就不差);
# 2. **生成式對抗網路(GAN)**:不挑圖,用一個數字評分:在本章訓練的 MNIST 分類器特徵上算 Fréchet 距離;
# 3. **對抗訓練(adversarial training)**:在 Transformer 文字分類器的**嵌入層**加上 FGM / PGD 擾動,
#    並在真正的攻擊下比較一般模型與對抗微調後的模型,連同乾淨準確率的變化與訓練成本。
#
# 全部在 2 核 CPU 上約兩到三分鐘跑完;設定格註明在 GPU 上該調高的數值。

# %%
import copy
import time

import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer

import helpers
from helpers.bert import Bert, BertClassifier, from_pretrained, mean_pool
from helpers.contrastive import (
    add_to_output,
    augment_digits,
    embedding_attack,
    frechet_distance,
    gaussian_stats,
    nt_xent,
)
from helpers.data import length_batches, load_imdb, load_mnist, load_sst2, minilm_path

helpers.set_style()
device = helpers.get_device()
print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
      f"native bf16: {helpers.bf16_fast(device)} (not used: this chapter runs in float32 either way)")

# %% [markdown]
# **設定 · Configuration.** 為 2 核 CPU 設定:SimCLR 與 GAN 都只用資料鏡像裡固定的 5,000 張 MNIST 訓練圖,
# 評估用全部 10,000 張測試圖;編碼器是 16-32-64 通道的小卷積網路;文字模型是從零訓練的 2 層、寬 64 的 BERT。
# 訓練長度全是固定的 epoch / 步數。註解寫出在 GPU 上可以調高的數值。

# %%
SEED = 0
WIDTH = 16  # encoder channels WIDTH-2W-4W (features: 4·WIDTH = 64); GPU: 64
SIMCLR_EPOCHS = 8  # unlabelled passes over the 5k training digits; GPU: 200
SIMCLR_BATCH = 256  # images per step (2 views each); GPU: 1024
TAU = 0.5  # NT-Xent temperature
PROJ_DIM = 64  # projection-head output
LR = 1e-3
LABELS = (100, 500, 5000)  # labelled training digits for the label-efficiency curve
FT_STEPS = 80  # fine-tuning steps (batch 64) per run, the same for every label count; GPU: 1_000
FT_LR = 3e-3
FT_SEEDS = (0,)  # GPU: (0, 1, 2)
FT_TEST = 2000  # test digits scored in 8.2.1 (all 10k in 8.2.2); GPU: 10_000
KNN_K = 10
TSNE_N = 1000  # test digits in the t-SNE map; GPU: 10_000
TEXT_N = 200  # IMDB reviews for the half-to-half retrieval check; SST-2 sentences: 300
LATENT, GAN_WIDTH, GAN_BATCH, GAN_LR = 64, 64, 64, 2e-4
GAN_EPOCHS = 2  # passes over the 5k digits per GAN; GPU: 30
TTUR_LR = (4e-4, 1e-4)  # discriminator / generator learning rates of the TTUR variant
CLF_EPOCHS = 2  # the MNIST classifier whose features the Fréchet distance uses; GPU: 10
FD_N = 5000  # generated digits per Fréchet distance; GPU: 10_000
ADV_TRAIN_N = 8000  # SST-2 training phrases; GPU: 67_349 (all)
ADV_HIDDEN = 64  # width of the 2-layer text BERT trained from scratch; GPU: 256 (or MiniLM itself)
ADV_FT_STEPS = 50  # fine-tuning steps (batch 64) after normal training, normal vs adversarial; GPU: 1_000
EPS_FRAC = 0.1  # ε = this fraction of the median per-sentence L2 norm of the word embeddings
PGD_STEPS = 5  # steps of the evaluation attack
ADV_SEEDS = (0, 1, 2)

# %% [markdown]
# MNIST 以張量一次載入(像素縮放到 [0, 1])。本章所有影像模型都用同一個編碼器架構:三個 3×3 卷積 + 批次正規化
# (BatchNorm)+ ReLU,前兩個後面接 2×2 最大池化,最後全域平均池化成 `4·WIDTH` 維特徵。

# %%
train_ds, test_ds = load_mnist(train=True), load_mnist(train=False)
Xtr, ytr = train_ds.data.float().div(255).unsqueeze(1), train_ds.targets
Xte, yte = test_ds.data.float().div(255).unsqueeze(1), test_ds.targets
print(f"train {tuple(Xtr.shape)}, test {tuple(Xte.shape)}")


def make_encoder(width=WIDTH):
    def block(cin, cout, pool=True):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()] + (
            [nn.MaxPool2d(2)] if pool else [])
    return nn.Sequential(*block(1, width), *block(width, 2 * width), *block(2 * width, 4 * width, pool=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


@torch.no_grad()
def features(model, X, batch=1000):
    model.eval()
    return torch.cat([model(X[i:i + batch].to(device)).cpu() for i in range(0, len(X), batch)])

# %% [markdown]
# ## 8.1 對比學習 · Contrastive learning
#
# 對比學習不需要標籤:它把「哪些樣本該相似」這個知識寫進資料擴增(data augmentation)。同一張圖的兩個隨機視角
# 是**正樣本對(positive pair)**,同一批次裡其他圖的視角都是**負樣本(negatives)**。
#
# ### 8.1.1 建構正負樣本對及損失函式 · Building positive/negative pairs and the loss
#
# 擴增是 `helpers.contrastive.augment_digits`:整批影像只做一次仿射 `grid_sample`,包含隨機裁切放大
# (random resized crop,邊長 0.6–1.0)、±15° 旋轉、±10 % 平移,再加 σ = 0.05 的高斯雜訊。**不做水平翻轉**:
# 自然影像翻轉後還是同一類(貓翻過來仍是貓),數字翻轉後卻不是合法數字(鏡像的 2、3、7),甚至可能像另一個數字,
# 等於教模型「這兩張不同的東西要一樣」。每一列是同一張數字的兩個視角:

# %%
gen = torch.Generator().manual_seed(SEED)
x8 = Xtr[:8]
v1, v2 = augment_digits(x8, gen), augment_digits(x8, gen)
fig, axes = plt.subplots(3, 8, figsize=(8, 3.2))
for j in range(8):
    for i, (img, name) in enumerate(((x8, "原圖"), (v1, "視角 1"), (v2, "視角 2"))):
        axes[i, j].imshow(img[j, 0].clamp(0, 1), cmap="gray")
        axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        if j == 0:
            axes[i, j].set_ylabel(name)
fig.suptitle("同一張數字的兩個隨機視角 = 正樣本對")
plt.show()

# %% [markdown]
# **NT-Xent**(normalized temperature-scaled cross-entropy,即 SimCLR 的 InfoNCE)。一批 $N$ 張圖得到 $2N$ 個
# 投影向量 $z$,先做 L2 正規化;對錨點(anchor)$i$ 與它的正樣本 $j$:
#
# $$\ell_{i} = -\log \frac{\exp(\mathrm{sim}(z_i, z_j)/\tau)}{\sum_{k \ne i} \exp(\mathrm{sim}(z_i, z_k)/\tau)}$$
#
# 分母包含正樣本與 $2N-2$ 個負樣本,損失是 $2N$ 個錨點的平均。先照公式逐個錨點寫迴圈:

# %%
def my_nt_xent_loop(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the other view of the same image
        others = [k for k in range(2 * n) if k != i]
        logits = torch.stack([z[i] @ z[k] for k in others]) / tau
        losses.append(torch.logsumexp(logits, 0) - z[i] @ z[j] / tau)
    return torch.stack(losses).mean()

# %% [markdown]
# 向量化版本:一次算出 $2N \times 2N$ 相似度矩陣,把對角線(自己和自己)遮成 $-\infty$,每列的「正確類別」就是
# 正樣本的索引,於是損失正好是 `F.cross_entropy`。兩者與 `helpers.contrastive.nt_xent` 相等(斷言):

# %%
def my_nt_xent(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = (z @ z.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, positives)


torch.manual_seed(SEED)
z1, z2 = torch.randn(16, PROJ_DIM), torch.randn(16, PROJ_DIM)
loop_loss, vec_loss = my_nt_xent_loop(z1, z2, TAU), my_nt_xent(z1, z2, TAU)
torch.testing.assert_close(loop_loss, vec_loss)
torch.testing.assert_close(vec_loss, nt_xent(z1, z2, TAU))
print(f"loop {loop_loss:.6f} == vectorised {vec_loss:.6f} == helpers.contrastive.nt_xent; "
      f"chance level log(2N−1) = {np.log(31):.4f}")

# %% [markdown]
# **溫度 τ 的作用。** 對錨點而言,損失對負樣本 $k$ 相似度的梯度正比於它在 softmax 裡的權重
# $p_k = e^{s_k/\tau} / \sum e^{s/\tau}$。τ 小時,權重幾乎全落在最相似的「困難負樣本」(hard negatives)上;
# τ 大時,所有負樣本被平均推開。左圖:一個錨點、49 個相似度從 −0.5 到 0.9 的負樣本,各得到多少梯度權重;
# 右圖:對齊的批次(兩視角幾乎相同)與隨機批次的損失如何隨 τ 變化。

# %%
sims = torch.linspace(-0.5, 0.9, 49)
pos = torch.tensor([0.95])
taus = (0.05, 0.1, 0.5, 1.0)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
hard_share = {}
for tau in taus:
    w = torch.softmax(torch.cat([pos, sims]) / tau, 0)[1:]
    w = w / w.sum()  # the share of the negatives' gradient each negative gets
    hard_share[tau] = w[sims > 0.7].sum().item()
    ax1.semilogy(sims, w, label=f"τ = {tau}")
ax1.set(xlabel="負樣本與錨點的餘弦相似度", ylabel="梯度權重占比", title="τ 越小,梯度越集中在困難負樣本")
ax1.legend()
tau_grid = np.geomspace(0.05, 2, 20)
aligned = z1 + 0.1 * torch.randn_like(z1)
ax2.plot(tau_grid, [nt_xent(z1, aligned, t).item() for t in tau_grid], label="對齊的視角")
ax2.plot(tau_grid, [nt_xent(z1, z2, t).item() for t in tau_grid], label="隨機配對")
ax2.axhline(np.log(31), color="gray", ls=":", label="log(2N−1)")
ax2.set(xscale="log", xlabel="溫度 τ", ylabel="NT-Xent", title="損失與溫度")
ax2.legend()
plt.tight_layout()
plt.show()
print("share of the negatives' gradient on the few with similarity > 0.7 (of 49): "
      + ", ".join(f"τ={t}: {s:.1%}" for t, s in hard_share.items()))

# %% [markdown]
# ### 8.1.2 SimCLR 的實現與初步應用 · Implementing and applying SimCLR
#
# SimCLR(Chen 等人,2020)= 編碼器 $f$ + 投影頭(projection head)$g$(兩層 MLP)+ NT-Xent。訓練只用影像、不用標籤;
# 之後丟掉 $g$,只保留編碼器的特徵 $h = f(x)$(論文發現 $g$ 之前的特徵對下游任務更好)。先存一份**同一個初始化**的
# 編碼器,當作 8.2.2 的「隨機編碼器」基準。

# %%
helpers.seed_everything(SEED)
encoder = make_encoder().to(device)
random_encoder = copy.deepcopy(encoder)  # same architecture and initialisation, never trained
head = nn.Sequential(nn.Linear(4 * WIDTH, 128), nn.ReLU(), nn.Linear(128, PROJ_DIM)).to(device)
opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=LR)
gen = torch.Generator().manual_seed(SEED)
simclr_losses, t0 = [], time.time()
for _epoch in tqdm(range(SIMCLR_EPOCHS), desc="SimCLR"):
    encoder.train()
    perm = torch.randperm(len(Xtr), generator=gen)
    for i in range(0, len(Xtr) - SIMCLR_BATCH + 1, SIMCLR_BATCH):  # drop the last partial batch
        x = Xtr[perm[i:i + SIMCLR_BATCH]]
        za = head(encoder(augment_digits(x, gen).to(device)))
        zb = head(encoder(augment_digits(x, gen).to(device)))
        loss = nt_xent(za, zb, TAU)
        opt.zero_grad()
        loss.backward()
        opt.step()
        simclr_losses.append(loss.item())
simclr_seconds = time.time() - t0
print(f"SimCLR: {SIMCLR_EPOCHS} epochs, {len(simclr_losses)} steps in {simclr_seconds:.0f} s; NT-Xent "
      f"{simclr_losses[0]:.3f} → {np.mean(simclr_losses[-5:]):.3f} (chance log(2·{SIMCLR_BATCH}−1) = "
      f"{np.log(2 * SIMCLR_BATCH - 1):.3f})")
assert np.mean(simclr_losses[-5:]) < simclr_losses[0] - 0.3

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(simclr_losses)
ax.set(xlabel="步數", ylabel="NT-Xent", title="SimCLR 訓練損失(不用標籤)")
plt.show()

# %% [markdown]
# ## 8.2 基於對比學習的預訓練與微調 · Contrastive pretraining and fine-tuning
#
# ### 8.2.1 透過對比學習進行自監督預訓練 · Self-supervised pretraining with contrastive learning
#
# 自監督預訓練的價值在**標籤少**的時候。經典的標籤效率曲線(label-efficiency curve):只給 100 / 500 / 5,000 個
# 有標籤的數字,把 SimCLR 編碼器加一層線性分類頭**微調全部權重**,對照**同一個網路從零訓練**(同一個初始化);兩者
# 同樣 `FT_STEPS` 步、每步 64 張(從有標籤的子集中抽)、同樣的學習率,在前 `FT_TEST` 張測試圖上評分。步數很少時,
# BatchNorm 的滑動平均統計量跟不上權重的變化,所以評估前用最終權重在有標籤的圖上重算一次(precise BN)。
# CPU 預算只夠每點一個種子。

# %%
def finetune(init_encoder, n_labels, seed, steps=FT_STEPS):
    g = torch.Generator().manual_seed(seed)
    labelled = torch.randperm(len(Xtr), generator=g)[:n_labels]
    torch.manual_seed(seed)
    model = nn.Sequential(copy.deepcopy(init_encoder), nn.Linear(4 * WIDTH, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=FT_LR)
    model.train()
    for _ in range(steps):
        idx = labelled[torch.randint(len(labelled), (64,), generator=g)]
        loss = F.cross_entropy(model(Xtr[idx].to(device)), ytr[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # BatchNorm statistics of the final weights on the labelled images ("precise BN")
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batches below
        for chunk in Xtr[labelled].split(500):
            model(chunk.to(device))
    return (features(model, Xte[:FT_TEST]).argmax(1) == yte[:FT_TEST]).float().mean().item()


curve = {kind: {n: [] for n in LABELS} for kind in ("SimCLR", "scratch")}
t0 = time.time()
for n in tqdm(LABELS, desc="label counts"):
    for seed in FT_SEEDS:
        curve["SimCLR"][n].append(finetune(encoder, n, seed))
        curve["scratch"][n].append(finetune(random_encoder, n, seed))
print(f"{len(LABELS) * len(FT_SEEDS) * 2} fine-tuning runs in {time.time() - t0:.0f} s")
for n in LABELS:
    def fmt(accs):  # a standard deviation only when there is more than one seed
        return f"{np.mean(accs):.1%}" + (f" ± {np.std(accs):.1%}" if len(accs) > 1 else "")
    print(f"{n:5d} labels: SimCLR + fine-tune {fmt(curve['SimCLR'][n])} | from scratch {fmt(curve['scratch'][n])}"
          + ("" if len(FT_SEEDS) > 1 else " (1 seed)"))

# %%
fig, ax = plt.subplots(figsize=(5, 3.2))
for kind, label in (("SimCLR", "SimCLR 預訓練 + 微調"), ("scratch", "從零訓練")):
    m = np.array([np.mean(curve[kind][n]) for n in LABELS])
    s = np.array([np.std(curve[kind][n]) for n in LABELS])
    ax.errorbar(LABELS, m, yerr=s, marker="o", capsize=3, label=label)
ax.set(xscale="log", xlabel="有標籤的訓練圖數", ylabel="測試準確率", title=f"標籤效率曲線(各 {FT_STEPS} 步,1 個種子)")
ax.legend()
plt.show()

# %% [markdown]
# **此規模下看不出差異**:100 個標籤時預訓練 65.0 % 對從零 63.2 %,500 個 80.8 % 對 82.6 %,5,000 個 86.2 % 對
# 86.6 %(各一個種子,差距都在 2 個百分點以內,方向也不一致)。以 3e-3 的學習率微調全部權重 80 步,足以把 SimCLR 的初始化
# 「洗掉」;經典曲線上的差距需要更長的預訓練,或微調時凍結 / 降低編碼器的學習率(本章未量)。下一節會看到,
# **凍結** SimCLR 特徵、只訓練線性分類器,反而比這裡任何一個微調結果都好。
#
# ### 8.2.2 對比學習在分類、聚類等任務中的表現 · Contrastive features for classification and clustering
#
# 凍結特徵,比較三種表示在**全部 10,000 張測試圖**上的表現:SimCLR 編碼器、原始像素(784 維)、同架構且同初始化的
# 隨機編碼器。線性探測(linear probe)= 在 5,000 張訓練圖的特徵上訓練邏輯迴歸(logistic regression,特徵先標準化);
# kNN 用餘弦距離、k = 10;k-means(k = 10)用 NMI 與 ARI 衡量分群與真實標籤的一致程度。

# %%
t0 = time.time()
reps = {"SimCLR": (features(encoder, Xtr), features(encoder, Xte)),
        "pixels": (Xtr.flatten(1), Xte.flatten(1)),
        "random encoder": (features(random_encoder, Xtr), features(random_encoder, Xte))}
scores = {}
for name, (ftr, fte) in reps.items():
    scaler = StandardScaler().fit(ftr.numpy())
    probe = LogisticRegression(max_iter=1000).fit(scaler.transform(ftr.numpy()), ytr.numpy())
    knn = KNeighborsClassifier(KNN_K, metric="cosine").fit(ftr.numpy(), ytr.numpy())
    km = KMeans(10, n_init=3, random_state=SEED).fit(F.normalize(fte, dim=1).numpy())
    scores[name] = dict(probe=probe.score(scaler.transform(fte.numpy()), yte.numpy()),
                        knn=knn.score(fte.numpy(), yte.numpy()),
                        nmi=normalized_mutual_info_score(yte.numpy(), km.labels_),
                        ari=adjusted_rand_score(yte.numpy(), km.labels_))
print(f"{'features':15s} {'dim':>4s} {'probe':>7s} {'kNN':>7s} {'NMI':>6s} {'ARI':>6s}   ({time.time() - t0:.0f} s)")
for name, s in scores.items():
    print(f"{name:15s} {reps[name][0].shape[1]:4d} {s['probe']:7.2%} {s['knn']:7.2%} {s['nmi']:6.3f} {s['ari']:6.3f}")
assert scores["SimCLR"]["probe"] > scores["pixels"]["probe"] + 0.02
assert scores["SimCLR"]["probe"] > scores["random encoder"]["probe"] + 0.02

# %% [markdown]
# 線性探測上 SimCLR 特徵明顯勝過像素(94.41 % 對 88.76 %)與隨機編碼器(90.48 %)(斷言,差距都超過 2 個百分點)。
# **kNN 與 k-means 卻反過來**:SimCLR 特徵的 kNN 是 85.08 %,低於像素的 94.05 %(和隨機編碼器的 84.71 % 差不多);
# k-means 的 NMI / ARI 是 0.335 / 0.192,也低於像素的 0.543 / 0.421。線性探測可以重新加權 64 個維度,kNN 與 k-means
# 只能用原始的距離;8 個 epoch 的 SimCLR 學到了「線性可分」的特徵,但特徵空間裡的距離還沒有整理成按數字分群。這是此
# 預算下的實測結果,更長的訓練或調整 τ 可能改變它,但本章沒有量到。用 t-SNE 把前 `TSNE_N` 張測試圖的 SimCLR 特徵
# 投影到 2 維,以真實標籤上色:

# %%
t0 = time.time()
fig, ax = plt.subplots(figsize=(5.5, 4.2))
xy = TSNE(2, init="pca", random_state=SEED, perplexity=30).fit_transform(reps["SimCLR"][1][:TSNE_N].numpy())
sc = ax.scatter(xy[:, 0], xy[:, 1], c=yte[:TSNE_N], cmap="tab10", s=5)
ax.set(title=f"SimCLR 特徵的 t-SNE({TSNE_N} 張測試圖)", xticks=[], yticks=[])
fig.colorbar(sc, ax=ax, ticks=range(10), label="真實數字")
plt.show()
print(f"t-SNE of {TSNE_N} digits: {time.time() - t0:.0f} s")

# %% [markdown]
# **文字這一側。** all-MiniLM-L6-v2 本身就是以對比學習(句對的 in-batch negatives)訓練的句向量模型。把它的平均池化
# 句向量與最簡單的基準比:**同一個模型的詞嵌入表**取平均(不經過 Transformer,所以沒有上下文)。兩個小檢查:
# (a) 取 `TEXT_N` 篇 IMDB 影評,各切成前半與後半(各 64 個 token),用前半去 `TEXT_N` 個後半裡找出自己的後半
# (檢索 top-1 準確率);(b) 300 句 SST-2 驗證句,看每句最近鄰(餘弦)的情感標籤是否相同。

# %%
tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
minilm = from_pretrained().to(device).eval()


@torch.no_grad()
def embed(id_lists, contextual):
    out = []
    for i in range(0, len(id_lists), 64):
        chunk = id_lists[i:i + 64]
        ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
        for j, x in enumerate(chunk):
            ids[j, :len(x)] = torch.tensor(x)
        am = (ids != 0).long()
        h = minilm(ids, am) if contextual else minilm.embeddings.word(ids)
        out.append(F.normalize(mean_pool(h, am), dim=-1))
    return torch.cat(out)


t0 = time.time()
reviews = list(load_imdb().select(range(TEXT_N))["text"])
ids = [tok(r.replace("<br />", " "), add_special_tokens=False)["input_ids"] for r in reviews]
first = [[tok.cls_token_id, *x[:64], tok.sep_token_id] for x in ids]
second = [[tok.cls_token_id, *x[64:128], tok.sep_token_id] for x in ids]
sst_val = load_sst2()["validation"].select(range(300))
sst_ids = tok(list(sst_val["sentence"]))["input_ids"]
sst_y = torch.tensor(sst_val["label"])
text_scores = {}
for name, ctx in (("MiniLM", True), ("averaged word embeddings", False)):
    a, b = embed(first, ctx), embed(second, ctx)
    retrieval = ((a @ b.T).argmax(1) == torch.arange(TEXT_N)).float().mean().item()
    s = embed(sst_ids, ctx)
    nn_idx = (s @ s.T).fill_diagonal_(-2).argmax(1)
    text_scores[name] = (retrieval, (sst_y[nn_idx] == sst_y).float().mean().item())
    print(f"{name:25s} IMDB half→half retrieval top-1 {retrieval:6.1%} | SST-2 nearest neighbour same label "
          f"{text_scores[name][1]:6.1%}")
print(f"({time.time() - t0:.0f} s; chance: {1 / TEXT_N:.1%} and ~50 %)")

# %% [markdown]
# 平均詞嵌入的上下文資訊只有「出現了哪些詞」:IMDB 前後半檢索 top-1 只有 10.5 %,MiniLM 的對比學習句向量是 36.0 %
# (隨機 0.5 %);SST-2 最近鄰標籤相同的比例 MiniLM 66.0 %、平均詞嵌入 56.3 %(隨機約 50 %)。MiniLM 的訓練目標是
# 語意相近,不是情感相同,所以第二項的優勢較小。
#
# ## 8.3 生成式對抗網路的實現與最佳化 · Implementing and optimizing a GAN
#
# GAN 的生成器(generator)$G$ 把雜訊 $z$ 變成影像,判別器(discriminator)$D$ 分辨真假,兩者交替最佳化。
# 挑幾張漂亮的樣本不算評估;常用的分數是 FID:把真圖與生成圖各送進一個分類網路取特徵,各擬合一個高斯分佈,
# 算兩者的 **Fréchet 距離**:
#
# $$d^2 = \lVert \mu_1-\mu_2 \rVert^2 + \mathrm{tr}\big(\Sigma_1+\Sigma_2-2(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}\big)$$
#
# FID 用 Inception-v3 的特徵,但離線環境沒有 Inception 權重(而且它看的是自然影像),所以這裡的特徵來自**本章自己
# 訓練的 MNIST 分類器**的倒數第二層(64 維)。數字不能和論文的 FID 比,只能在本章內相互比較。先手寫一個版本
# (用 `scipy.linalg.sqrtm`),在兩個已知閉式解的高斯上檢查:對角共變異數時,距離 = $\lVert\mu_1-\mu_2\rVert^2 +
# \sum_i(\sigma_{1,i}-\sigma_{2,i})^2$;並與 `helpers.contrastive.frechet_distance`(用對稱特徵分解)比對。

# %%
def my_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


rng = np.random.default_rng(SEED)
mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
sd_a, sd_b = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
closed = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
ours = my_frechet(mu_a, np.diag(sd_a ** 2), mu_b, np.diag(sd_b ** 2))
full = rng.normal(size=(8, 8))
cov_full = full @ full.T + np.eye(8)
print(f"closed form {closed:.6f}, my_frechet {ours:.6f}, helpers {frechet_distance(mu_a, np.diag(sd_a ** 2), mu_b, np.diag(sd_b ** 2)):.6f}")
assert abs(ours - closed) < 1e-8 * closed
assert abs(frechet_distance(mu_a, np.diag(sd_a ** 2), mu_b, np.diag(sd_b ** 2)) - closed) < 1e-8 * closed
assert abs(frechet_distance(mu_a, cov_full, mu_b, np.eye(8)) - my_frechet(mu_a, cov_full, mu_b, np.eye(8))) < 1e-6
samples = rng.normal(size=(20000, 8)) * sd_a + mu_a  # from samples: close to the closed form, not equal
print(f"from 20,000 samples of the first Gaussian: {frechet_distance(*gaussian_stats(samples), mu_b, np.diag(sd_b ** 2)):.4f}")

# %% [markdown]
# 三者都等於閉式解 20.169655;從 20,000 個樣本估計的統計量算出 20.1985,有限樣本的偏差正是 FID 要固定樣本數的原因。
#
# **評分用的分類器。** 一個兩層卷積的小 CNN,用 5,000 張有標籤訓練圖訓練 `CLF_EPOCHS` 個 epoch;GAN 的影像在
# [−1, 1],所以分類器也看 [−1, 1] 的影像。它的倒數第二層(64 維)是 Fréchet 距離的特徵,最後一層用來數生成圖的類別。

# %%
to_pm1 = lambda x: x * 2 - 1  # noqa: E731  [0, 1] → [-1, 1]
helpers.seed_everything(SEED)
judge = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 49, 64), nn.ReLU(),
                      nn.Linear(64, 10)).to(device)
opt = torch.optim.Adam(judge.parameters(), lr=LR)
t0 = time.time()
for _epoch in range(CLF_EPOCHS):
    judge.train()
    for idx in torch.randperm(len(Xtr)).split(64):
        loss = F.cross_entropy(judge(to_pm1(Xtr[idx]).to(device)), ytr[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
judge_acc = (features(judge, to_pm1(Xte)).argmax(1) == yte).float().mean().item()
judge_features = judge[:-1]  # up to the 64-d penultimate layer (after ReLU)
real_stats = gaussian_stats(features(judge_features, to_pm1(Xte)))
fd_real = frechet_distance(*gaussian_stats(features(judge_features, to_pm1(Xtr))), *real_stats)
print(f"judge CNN: test accuracy {judge_acc:.1%} in {time.time() - t0:.0f} s; "
      f"Fréchet distance real train vs real test = {fd_real:.2f} (the floor)")
assert judge_acc > 0.9

# %% [markdown]
# **DCGAN。** 生成器:$z$(64 維)→ 全連接成 128×7×7 → 兩個轉置卷積放大到 28×28,tanh 輸出;判別器:兩個步長 2 的
# 卷積(LeakyReLU)→ 一個 logit。兩邊都有 BatchNorm,Adam(2e-4,β = (0.5, 0.999)),批次 64(Radford 等人的設定)。
# 每一步先更新 $D$(真圖標 1、假圖標 0),再更新 $G$(讓 $D$ 把假圖判成 1,即非飽和損失)。

# %%
def make_generator(w=GAN_WIDTH):
    return nn.Sequential(nn.Linear(LATENT, 2 * w * 49), nn.Unflatten(1, (2 * w, 7, 7)), nn.BatchNorm2d(2 * w),
                         nn.ReLU(), nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),
                         nn.ConvTranspose2d(w, 1, 4, 2, 1), nn.Tanh())


def make_discriminator(w=GAN_WIDTH):
    return nn.Sequential(nn.Conv2d(1, w // 2, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w // 2, w, 4, 2, 1),
                         nn.BatchNorm2d(w), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(w * 49, 1))


z_eval = torch.randn(FD_N, LATENT, generator=torch.Generator().manual_seed(SEED + 1))


@torch.no_grad()
def score_generator(G):
    """Fréchet distance to the real test digits and the judge's class histogram, on FD_N fixed latents."""
    G.eval()
    fake = torch.cat([G(z.to(device)).cpu() for z in z_eval.split(1000)])
    G.train()
    f = features(judge_features, fake)
    return frechet_distance(*gaussian_stats(f), *real_stats), torch.bincount(judge[-1](f).argmax(1), minlength=10)


def train_gan(lr_d=GAN_LR, lr_g=GAN_LR, seed=SEED, desc="DCGAN", snapshots=()):
    helpers.seed_everything(seed)
    G, D = make_generator().to(device), make_discriminator().to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    ones, zeros = torch.ones(GAN_BATCH, 1, device=device), torch.zeros(GAN_BATCH, 1, device=device)
    hist, grids, step, t0 = {"D": [], "G": []}, {}, 0, time.time()
    for _epoch in tqdm(range(GAN_EPOCHS), desc=desc):
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr) - GAN_BATCH + 1, GAN_BATCH):
            if step in snapshots:
                with torch.no_grad():
                    G.eval()
                    grids[step] = G(z_eval[:16].to(device)).cpu()
                    G.train()
            real = to_pm1(Xtr[perm[i:i + GAN_BATCH]]).to(device)
            fake = G(torch.randn(GAN_BATCH, LATENT, generator=g).to(device))
            loss_d = (F.binary_cross_entropy_with_logits(D(real), ones)
                      + F.binary_cross_entropy_with_logits(D(fake.detach()), zeros))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            hist["D"].append(loss_d.item())
            hist["G"].append(loss_g.item())
            step += 1
    with torch.no_grad():
        G.eval()
        grids[step] = G(z_eval[:16].to(device)).cpu()
    return G, hist, grids, time.time() - t0


helpers.seed_everything(SEED)
fd_untrained, hist_untrained = score_generator(make_generator().to(device))
steps_per_epoch = len(Xtr) // GAN_BATCH
G_base, gan_hist, gan_grids, gan_seconds = train_gan(snapshots=(0, 20, 50, steps_per_epoch))
fd_base, class_hist = score_generator(G_base)
print(f"DCGAN: {GAN_EPOCHS} epochs ({len(gan_hist['D'])} steps) in {gan_seconds:.0f} s")
print(f"Fréchet distance to the real test digits: untrained G {fd_untrained:.1f}, trained G {fd_base:.1f}, "
      f"real train digits {fd_real:.2f}")
assert fd_base < fd_untrained / 4

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3), gridspec_kw={"width_ratios": [1, 1.2]})
kernel = np.ones(10) / 10
for name, label in (("D", "判別器 D"), ("G", "生成器 G")):
    axes[0].plot(np.convolve(gan_hist[name], kernel, mode="valid"), label=label)
axes[0].set(xlabel="步數", ylabel="BCE 損失(10 步移動平均)", title="GAN 的兩個損失")
axes[0].legend()
axes[1].bar(range(10), class_hist.numpy())
axes[1].axhline(FD_N / 10, color="gray", ls=":", label="均勻")
axes[1].set(xticks=range(10), xlabel="分類器判定的數字", ylabel="張數", title=f"{FD_N} 張生成圖的類別分佈")
axes[1].legend()
plt.tight_layout()
plt.show()
print("class histogram of generated digits:", class_hist.tolist())

# %%
fig, axes = plt.subplots(len(gan_grids), 16, figsize=(10, 0.7 * len(gan_grids) + 0.4))
for r, (step, imgs) in enumerate(gan_grids.items()):
    for c in range(16):
        axes[r, c].imshow(imgs[c, 0], cmap="gray", vmin=-1, vmax=1)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(f"{step} 步", rotation=0, ha="right", va="center")
fig.suptitle("同一組固定的 z,在訓練不同階段生成的數字")
plt.show()

# %% [markdown]
# 未訓練的生成器距離 1198.4,訓練 2 個 epoch(156 步)後降到 83.5(斷言:低於四分之一),真實訓練圖對
# 測試圖是 1.12,所以還有很大的距離。類別分佈 [393, 113, 1450, 315, 229, 584, 373, 318, 927, 298] 不均勻:
# 「2」和「8」過多,「1」只有 113 張,是部分的模式崩塌(mode collapse)跡象;固定的 z 在不同階段的樣本顯示筆畫
# 逐漸成形,但許多數字還不易辨認。
#
# **最佳化:TTUR。** 書中列出的 GAN 技巧(標籤平滑、譜正規化、TTUR……)不一定在每個規模都有效,所以要用同一個分數量。
# 這裡試 TTUR(two time-scale update rule,Heusel 等人 2017):判別器學習率 4e-4、生成器 1e-4,其他完全相同
# (同樣的種子、資料順序、步數)。

# %%
G_ttur, ttur_hist, _, ttur_seconds = train_gan(*TTUR_LR, desc="DCGAN + TTUR")
fd_ttur, ttur_class_hist = score_generator(G_ttur)
print(f"Fréchet distance after {GAN_EPOCHS} epochs: base {fd_base:.1f}, TTUR {fd_ttur:.1f} ({ttur_seconds:.0f} s); "
      f"one seed each")
print("TTUR class histogram:", ttur_class_hist.tolist())

# %% [markdown]
# TTUR 在此預算下**更差**:271.1 對 83.5(各一個種子)。差距很大,方向也說得通:生成器的學習率減半,固定的 156 步
# 內它學得更慢;TTUR 的好處(Heusel 等人證明它收斂到局部納許均衡)要在更長的訓練才可能出現。結論:這裡不能把
# TTUR 當成免費的改進,技巧要在自己的規模上量過才算數。
#
# ## 8.4 對抗訓練在大模型中的應用 · Adversarial training for large models
#
# 文字是離散的 token,無法像影像一樣對輸入加微小擾動;Miyato 等人(2017)改在**詞嵌入**上加擾動,之後 FGM、PGD、
# FreeLB 成為 BERT 微調的常用技巧。FGM(fast gradient method)沿損失梯度方向走一步:
# $r = \epsilon\, g / \lVert g\rVert_2$;PGD(projected gradient descent)走多小步,每步投影回半徑 ε 的球。
# 這裡的 ε 是**每個句子**所有 token 嵌入擾動的 L2 範數上限。
#
# 常見的實作照參數名稱(`emb_name="word_embeddings"`)找嵌入層,名字一不對就**靜靜地什麼都沒攻擊**。
# `helpers.contrastive` 因此要求直接傳入嵌入模組:`embedding_attack(loss_fn, module, ε, steps)` 用 forward hook
# 在該模組的輸出上加擾動並求梯度,`add_to_output(module, delta)` 只在 `with` 區塊內加上擾動、離開就移除;
# 如果模型在區塊裡根本沒呼叫那個模組,兩者都丟出 `ValueError`。單元測試證明擾動確實到達嵌入、步驟結束後模型恢復原狀。
#
# 模型:MiniLM 的 WordPiece 分詞器 + 從零訓練的 2 層、寬 `ADV_HIDDEN` 的 BERT(平均池化分類頭),SST-2 的
# `ADV_TRAIN_N` 個訓練片語、一個 epoch,在全部 872 句驗證集上評估。

# %%
sst = load_sst2()
adv_train = sst["train"].shuffle(seed=SEED).select(range(ADV_TRAIN_N))
encode = lambda texts: tok(list(texts), truncation=True, max_length=48)["input_ids"]  # noqa: E731
adv_batches = length_batches(encode(adv_train["sentence"]), torch.tensor(adv_train["label"]), 64, shuffle_seed=SEED)
val_batches = length_batches(encode(sst["validation"]["sentence"]), torch.tensor(sst["validation"]["label"]), 256)


def text_loss(model, batch):
    ids, am, y = (t.to(device) for t in batch)
    return F.cross_entropy(model(ids, am), y)


def text_accuracy(model, epsilon=0.0):
    """Validation accuracy, clean (epsilon = 0) or under a PGD_STEPS-step PGD attack on the word embeddings."""
    model.eval()
    hits = 0
    for batch in val_batches:
        ids, am, y = (t.to(device) for t in batch)
        delta = (embedding_attack(lambda: text_loss(model, batch), model.bert.embeddings.word, epsilon, PGD_STEPS)
                 if epsilon > 0 else torch.zeros(*ids.shape, ADV_HIDDEN, device=device))
        with torch.no_grad(), add_to_output(model.bert.embeddings.word, delta):
            hits += (model(ids, am).argmax(1) == y).sum().item()
    model.train()
    return hits / 872


helpers.seed_everything(SEED)
text_model = BertClassifier(Bert(hidden_size=ADV_HIDDEN, num_layers=2, num_heads=4, intermediate_size=2 * ADV_HIDDEN,
                                 max_positions=64), num_labels=2).to(device)
opt = torch.optim.AdamW(text_model.parameters(), lr=LR)
t0 = time.time()
for batch in tqdm(adv_batches, desc="normal training"):
    loss = text_loss(text_model, batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
with torch.no_grad():
    seq_norms = torch.cat([text_model.bert.embeddings.word(ids).flatten(1).norm(dim=1) for ids, _, _ in val_batches])
EPSILON = EPS_FRAC * seq_norms.median().item()
base_clean, base_attacked = text_accuracy(text_model), text_accuracy(text_model, EPSILON)
print(f"normal training: {len(adv_batches)} steps in {time.time() - t0:.0f} s; median per-sentence embedding norm "
      f"{seq_norms.median():.3f} → ε = {EPSILON:.4f}")
print(f"validation accuracy: clean {base_clean:.1%}, under {PGD_STEPS}-step PGD at ε {base_attacked:.1%}")
assert base_clean > 0.65 and base_attacked < base_clean - 0.1

# %% [markdown]
# 一般訓練的模型乾淨準確率 76.8 %;ε = 0.0999(嵌入範數中位數 0.999 的 10 %)的 5 步 PGD 攻擊就把它打到 38.2 %,
# 比隨機猜還差。
#
# 從零對抗訓練在這個規模會崩到多數類別(實測過);常見做法是**對抗微調**:從這個一般訓練好的模型出發,再訓練
# `ADV_FT_STEPS` 步,兩種做法比較,其他條件相同(同一批資料、同樣的學習率 3e-4、3 個種子):
#
# - **一般微調**:只有乾淨損失;
# - **FGM 對抗微調**:每步先算乾淨損失的梯度,再用 FGM 在嵌入上找擾動(ε 與攻擊相同),加上擾動後的損失梯度
#   (兩者累加)再更新。

# %%
def adv_finetune(kind, seed):
    model = copy.deepcopy(text_model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    torch.manual_seed(seed)
    order = torch.randperm(len(adv_batches))[:ADV_FT_STEPS]
    t0 = time.time()
    for i in order.tolist():
        batch = adv_batches[i]
        opt.zero_grad()
        text_loss(model, batch).backward()
        if kind == "FGM":
            delta = embedding_attack(lambda: text_loss(model, batch), model.bert.embeddings.word, EPSILON, steps=1)
            with add_to_output(model.bert.embeddings.word, delta):
                text_loss(model, batch).backward()
        opt.step()
    seconds = time.time() - t0
    return dict(clean=text_accuracy(model), attacked=text_accuracy(model, EPSILON), seconds=seconds)


adv_runs = {kind: [adv_finetune(kind, s) for s in tqdm(ADV_SEEDS, desc=kind)] for kind in ("normal", "FGM")}
adv_summary = {kind: {k: (np.mean([r[k] for r in runs]), np.std([r[k] for r in runs])) for k in runs[0]}
               for kind, runs in adv_runs.items()}
print(f"{'fine-tuning':12s} {'clean':>15s} {'PGD attack':>15s} {'seconds':>10s}   (mean ± sd over {len(ADV_SEEDS)} seeds)")
for kind, s in adv_summary.items():
    print(f"{kind:12s} {s['clean'][0]:8.1%} ± {s['clean'][1]:.1%} {s['attacked'][0]:8.1%} ± {s['attacked'][1]:.1%} "
          f"{s['seconds'][0]:7.1f} s")
adv_cost = adv_summary["FGM"]["seconds"][0] / adv_summary["normal"]["seconds"][0]
print(f"FGM costs {adv_cost:.1f}× the time of normal fine-tuning per step")
assert min(r["attacked"] for r in adv_runs["FGM"]) > max(r["attacked"] for r in adv_runs["normal"])

# %% [markdown]
# FGM 對抗微調後,攻擊下的準確率是 44.0 % ± 0.7 %,一般微調是 38.4 % ± 1.4 %(3 個種子;斷言 FGM 最差的種子也
# 勝過一般微調最好的種子),乾淨準確率沒有下降(76.4 % ± 1.5 % 對 75.6 % ± 1.8 %,差距在種子間的波動內)。代價是
# 每步 2.1 倍的時間(多一次前向與兩次反向傳播)。提升是真的,但有限:攻擊下仍遠低於乾淨準確率,更強的防禦需要更多
# 步數或 PGD / FreeLB 式的多步訓練。
#
# ## 8.5 本章小結 · Summary
#
# - **NT-Xent**:逐錨點迴圈、`F.cross_entropy` 向量化版本與 `helpers.contrastive.nt_xent` 相等(斷言)。τ = 0.05 時,
#   相似度 > 0.7 的 7 個困難負樣本拿走 98.3 % 的梯度權重,τ = 1 時只有 24.3 %。
# - **SimCLR**(8 個 epoch、本次 20 秒、不用標籤):凍結特徵的線性探測在 10,000 張測試圖上 94.41 %,勝過原始像素
#   88.76 % 與同架構隨機編碼器 90.48 %(斷言)。但 kNN(85.08 % 對像素 94.05 %)與 k-means(NMI 0.335 對 0.543)
#   仍是像素較好;標籤效率曲線上,微調全部權重 80 步時預訓練與從零**此規模下看不出差異**。
# - **文字**:MiniLM 的對比句向量在 IMDB 前後半檢索 36.0 %,平均詞嵌入 10.5 %。
# - **GAN**:在本章分類器(92.9 %)特徵上的 Fréchet 距離,從未訓練的 1198.4 降到 83.5(斷言);TTUR 在同樣的步數
#   下是 271.1,更差;「1」明顯不足,有部分模式崩塌。
# - **對抗訓練**:嵌入層上 ε = 0.1 的 PGD 攻擊把一般模型從 76.8 % 打到 38.2 %;FGM 對抗微調 44.0 % 對一般微調
#   38.4 %(3 個種子,斷言),乾淨準確率不變,成本 2.1 倍。

# %%
helpers.report(8, simclr_probe=scores["SimCLR"]["probe"], pixel_probe=scores["pixels"]["probe"],
               random_probe=scores["random encoder"]["probe"], simclr_knn=scores["SimCLR"]["knn"],
               pixel_knn=scores["pixels"]["knn"], simclr_nmi=scores["SimCLR"]["nmi"], pixel_nmi=scores["pixels"]["nmi"],
               ft100_simclr=np.mean(curve["SimCLR"][100]), ft100_scratch=np.mean(curve["scratch"][100]),
               fd_untrained=fd_untrained, fd_trained=fd_base, fd_ttur=fd_ttur, fd_real=fd_real,
               adv_normal_clean=adv_summary["normal"]["clean"][0], adv_normal_attacked=adv_summary["normal"]["attacked"][0],
               adv_fgm_clean=adv_summary["FGM"]["clean"][0], adv_fgm_attacked=adv_summary["FGM"]["attacked"][0])

# %% [markdown]
# ## 8.6 思考題 · Exercises
#
# **1.** 為什麼 SimCLR 的擴增不該包含水平翻轉?用 8.3 的分類器量一量:把測試圖左右翻轉,準確率變成多少?

# %% tags=["answer"]
flip_acc = (features(judge, to_pm1(Xte.flip(-1))).argmax(1) == yte).float().mean().item()
print(f"judge CNN on test digits: as they are {judge_acc:.1%}, mirrored left-right {flip_acc:.1%}")
print("A mirrored digit is mostly not the same digit any more, so a flip would teach the encoder to map different "
      "things to the same point; augmentations must keep the label, and for digits a flip does not.")

# %% [markdown]
# **2.** 8.1.1 的左圖中,τ = 0.05 與 τ = 1 時,相似度 > 0.7 的少數困難負樣本拿走多少梯度權重?這對訓練意味著什麼?

# %% tags=["answer"]
n_hard = int((sims > 0.7).sum())
for tau in taus:
    print(f"τ = {tau}: the {n_hard} hardest of 49 negatives get {hard_share[tau]:.1%} of the weight "
          f"(uniform would be {n_hard / 49:.1%})")
print("A small τ concentrates the push on the few negatives closest to the anchor (sharper, but noisier and "
      "sensitive to false negatives of the same class); a large τ spreads it evenly, like a plain average.")

# %% [markdown]
# **3.** 動手做:把 8.4 的 FGM 對抗微調換成 3 步 PGD(`steps=3`),用一個種子比較攻擊下的準確率與每步成本。

# %% tags=["answer"]
def pgd_finetune(seed, steps=3):
    model = copy.deepcopy(text_model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    torch.manual_seed(seed)
    t0 = time.time()
    for i in torch.randperm(len(adv_batches))[:ADV_FT_STEPS].tolist():
        batch = adv_batches[i]
        opt.zero_grad()
        text_loss(model, batch).backward()
        delta = embedding_attack(lambda: text_loss(model, batch), model.bert.embeddings.word, EPSILON, steps=steps)
        with add_to_output(model.bert.embeddings.word, delta):
            text_loss(model, batch).backward()
        opt.step()
    return text_accuracy(model), text_accuracy(model, EPSILON), time.time() - t0


pgd_clean, pgd_attacked, pgd_seconds = pgd_finetune(ADV_SEEDS[0])
fgm0 = adv_runs["FGM"][0]
print(f"seed {ADV_SEEDS[0]}: PGD-3 fine-tuning clean {pgd_clean:.1%}, attacked {pgd_attacked:.1%}, {pgd_seconds:.1f} s | "
      f"FGM clean {fgm0['clean']:.1%}, attacked {fgm0['attacked']:.1%}, {fgm0['seconds']:.1f} s")
print("PGD training matches the attack it will face more closely and costs about (steps + 1)/2 times FGM per step; "
      "with one seed, a gap of a point or two is within the spread measured above.")
