"""reproduce.py's reference experiments, EXPERIMENTS = {name: spec}. A spec: what it is (title),
the train.py flags of all settings (base) and of each, epochs (full, quick), the columns printed
(label, a history row's key or a function of the row), the published numbers {setting: {epoch:
{column label: value}}} and a note on their units; optionally layout "final" (one table at the
last epoch, not one row per epoch), figures [(file, "samples" or "reconstructions", title,
settings)], final (what evaluate.py measures, below, or "autoencoder":
measure.autoencoder_measures) with published_final {setting: {label: text}} beside it, and
per_class (the one-class table)."""

# What evaluate.py measures on each run's last weights for the table "At the last epoch": the
# flags it runs with, when its metrics.json already holds them (ready), --iw-samples (full,
# quick), and {column: a metrics.json key or a function of it}; a number the run lacks is left out.
SAMPLE_QUALITY = dict(
    flags=["--no-figures"], iw=(1000, 100),
    ready=lambda m: m.get("features", {}).get("domain", {}).get("samples") == 10000,
    labels={"NLL (IW)": "nll_iw", "FID": "fid", "KID": "kid", "precision": "precision",
            "recall": "recall", "coverage": "coverage", "FID rec": "fid_recon",
            "classes (entropy)": "class_entropy",
            "feature network": lambda m: m["features"]["domain"]["hash"], "class match": "class_match"})
DISENTANGLEMENT = dict(  # with evaluate.py's figures: the factor heat map and the traversals
    flags=["--fid-samples", "0"], ready=lambda m: "mig" in m,
    labels={"BetaVAE": "beta_vae", "FactorVAE": "factor_vae", "MIG": "mig",
            "DCI D": "dci_disentanglement", "DCI C": "dci_completeness",
            "DCI I": "dci_informativeness", "SAP": "sap"})
ANOMALY = dict(flags=["--fid-samples", "0", "--no-figures"], ready=lambda m: "auroc_recon_error" in m,
               labels={"AUROC rec": "auroc_recon_error", "AUROC code": "auroc_code_distance",
                       "AUROC ELBO": "auroc_nelbo"})

ONE_CLASS_MODELS = {"pca": ["--model", "pca", "--epochs", "1"],
                    "ae-mlp": ["--model", "ae", "--epochs", "20"],
                    "ae-conv": ["--model", "ae", "--arch", "conv", "--epochs", "5"],
                    "vae-mlp": ["--model", "vae", "--epochs", "20"],
                    "vae-conv": ["--model", "vae", "--arch", "conv", "--epochs", "5"]}
# dataset: {method: [AUROC % of normal classes 0-9]}: Ruff et al. 2018 ("Deep One-Class
# Classification"), Table 1, means over 10 seeds (stds 0.1 to 1.6), as quoted by two sources
# that agree; its other rows (the DCAE baseline among them) could not be read here
ONE_CLASS_PUBLISHED = {"mnist": {"One-Class Deep SVDD": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5,
                                                         98.3, 94.6, 93.9, 96.5]}}
DATASETS = {"mnist": "mnist", "fashion": "fashion-mnist"}  # a setting's prefix: the dataset
GAUSSIAN_ARCHS = {"mlp": ["--hidden", "300,100,10", "--lr", "0.0025"],
                  "cnn": ["--arch", "conv3x3", "--lr", "0.0015"]}
SAMPLE_QUALITY_MODELS = {"vae": ["--model", "vae"], "vaegan": ["--model", "vaegan"],
                         "vaegan-no-bn": ["--model", "vaegan", "--no-batchnorm"],
                         "vaegan-gamma10": ["--model", "vaegan", "--gamma", "10"],
                         "vaegan-no-bn-gamma10": ["--model", "vaegan", "--no-batchnorm", "--gamma", "10"],
                         "cvae": ["--model", "cvae"]}

EXPERIMENTS = {
    "pytorch-examples-vae": dict(
        title="pytorch/examples' MNIST VAE (MLP 784-400-20, Adam 1e-3, batch 128, BCE)",
        base=["--dataset", "mnist"], settings={"vae": []}, epochs=(10, 2),
        columns=[("test loss", "test_loss"), ("train loss", "train_loss")],
        published={"vae": {10: {"test loss": 105.55}}},
        note="negative ELBO in nats per image, z sampled once, as main.py prints it"),
    "mnist-2d-latent": dict(
        title="the 2-D-latent MNIST VAE tutorial (MLP 784-400-2)",
        base=["--dataset", "mnist", "--latent-dim", "2"], settings={"vae": []}, epochs=(10, 2),
        columns=[("train loss", "train_loss"), ("train recon", "train_recon"),
                 ("train KL", "train_kl"), ("test loss", "test_loss"), ("test KL", "test_kl")],
        published={"vae": {10: {"train loss": 154.52, "test loss": 154.80, "test KL": 5.88}}},
        note="nats per image; negative ELBO with z sampled once"),
    "vaegan-batchnorm": dict(
        title="the MNIST VAE-GAN batch-norm study (MLP VAE-GAN, d = 20; denoising d = 10)",
        base=["--model", "vaegan", "--dataset", "mnist"],
        settings={"bn": ["--latent-dim", "20"], "no-bn": ["--latent-dim", "20", "--no-batchnorm"],
                  "denoising-bn": ["--latent-dim", "10", "--noise", "gaussian:0.5"],
                  "denoising-no-bn": ["--latent-dim", "10", "--noise", "gaussian:0.5",
                                      "--no-batchnorm"],
                  # ours: one flag each that weakens the adversarial pull on the decoder
                  "bn-gamma10": ["--latent-dim", "20", "--gamma", "10"],
                  "no-bn-gamma10": ["--latent-dim", "20", "--gamma", "10", "--no-batchnorm"],
                  "bn-weaker-disc": ["--latent-dim", "20", "--lr-disc", "1e-4"]},
        epochs=(10, 2),
        columns=[("test loss (z = mu)", "test_loss"), ("negative ELBO", "test_nelbo"),
                 ("KL", "test_kl")],
        figures=[("samples.png", "samples", "VAE-GAN samples (the same z in each row of a "
                  "latent size)", ["bn", "no-bn", "bn-gamma10", "no-bn-gamma10", "bn-weaker-disc"])],
        published={s: {e: {"test loss (z = mu)": v} for e, v in enumerate(values, 1)} for s, values in {
            # section 4: the test set loss after each epoch
            "bn": [147.84, 125.58, 114.92, 107.75, 103.73, 101.18, 99.68, 98.59, 98.25, 97.33],
            "no-bn": [230.33, 180.40, 157.06, 142.45, 134.21, 128.91, 126.73, 124.57, 122.25, 119.86],
            "denoising-bn": [164.16, 154.75, 154.71, 152.69, 150.39, 144.79, 133.71, 132.98, 124.23, 121.48],
            "denoising-no-bn": [347.02, 247.79, 207.18, 186.86, 178.08, 168.44, 162.59, 155.95, 150.02,
                                146.45]}.items()},
        note="the study's test loss is BCE of the decode of z = mu plus the KL (not a bound); "
             "its denoising noise is not given (Gaussian 0.5 is our choice) and its 'dimension "
             "100' is read as d^2 = 100; it does not say how it weighs reconstruction against "
             "the adversarial term, so gamma = 10 and a slower discriminator are shown too"),
    "cifar10-regularization": dict(
        title="the CIFAR-10 regularization tutorial (conv VAE 32-64-128, latent 256, tanh, MSE)",
        base=["--arch", "conv", "--latent-dim", "256", "--output", "tanh", "--recon", "mse",
              "--scheduler", "step"],
        settings={"vae": ["--model", "vae"],
                  "vae-regularized": ["--model", "vae", "--dropout", "0.3", "--weight-decay",
                                      "1e-4", "--beta", "4", "--augment"],
                  "ae": ["--model", "ae"]},
        epochs=(50, 2),  # test recon: squared error summed over the 3,072 values on [-1, 1]
        columns=[("test MSE", lambda row: row["test_recon"] / 3072 / 4)],
        figures=[("reconstructions.png", "reconstructions", "CIFAR-10 test images and their "
                  "reconstructions (the AE's code h; the VAEs' z = mu)",
                  ["ae", "vae", "vae-regularized"])],
        published={"vae": {50: {"test MSE": 0.0150}}, "vae-regularized": {50: {"test MSE": 0.0220}}},
        note="MSE per [0, 1] pixel of the reconstruction with z sampled; the published numbers "
             "are after 50 epochs on all 50,000 training images"),
    "cifar10-vqvae": dict(
        title="the VQ-VAE against the conv VAE on CIFAR-10 at a matched rate (VQ-VAE: 8x8 codes of 512, "
              "64 log 512 = 399 nats an image; the VAE: 32-64-128, latent 256, beta 0.03 for a KL near 399)",
        base=["--output", "tanh", "--recon", "mse"],
        settings={"vqvae": ["--model", "vqvae"],
                  **{name: ["--model", "vae", "--arch", "conv", "--latent-dim", "256", "--scheduler", "step",
                            "--beta", beta] for name, beta in (("vae-beta0.03", "0.03"), ("vae", "1"))}},
        epochs=(50, 2),
        columns=[("test MSE", lambda row: row["test_recon"] / 3072 / 4), ("rate, nats", "test_kl")],
        published={},
        note="MSE per [0, 1] pixel (the VAE's z sampled once); the rate is the VAE's test KL and the "
             "VQ-VAE's fixed-length code, 64 log 512 nats; van den Oord et al. 2017 report bits/dim, not "
             "MSE, so no published number stands beside these"),
    "gaussian-decoder": dict(
        title="the MLP-vs-CNN Gaussian-decoder study (VAE with decoder N(x_hat, cI) and a "
              "softplus encoder variance, MNIST and Fashion-MNIST)",
        base=["--recon", "gaussian", "--posterior-variance", "softplus", "--act", "elu",
              "--batch-size", "256"],
        settings={f"{arch}-{dataset}-z{z}{'' if c == '0.05' else '-c' + c}": [
            *GAUSSIAN_ARCHS[arch], "--dataset", DATASETS[dataset], "--latent-dim", str(z), "--c", c]
            for arch, dataset, z, c in (
                *((arch, dataset, 2, "0.05") for arch in ("mlp", "cnn") for dataset in DATASETS),
                *((arch, "mnist", z, "0.05") for arch in ("mlp", "cnn") for z in (1, 3, 20)),
                ("mlp", "mnist", 2, "1e-4"), ("mlp", "mnist", 2, "1"))},
        epochs=(15, 2), layout="final",
        columns=[("train loss", "train_loss"), ("train recon", "train_recon"),
                 ("train KL", "train_kl"), ("test loss", "test_loss")],
        published={"mlp-mnist-z2": {15: {"train loss": 307, "train recon": 293, "train KL": 14}},
                   "mlp-fashion-z2": {15: {"train loss": 229, "train recon": 216, "train KL": 13.4}},
                   "cnn-mnist-z2": {15: {"train loss": 322}}, "cnn-fashion-z2": {15: {"train loss": 246}}},
        figures=[("samples-per-dataset.png", "samples", "samples, latent size 2, c = 0.05",
                  ["mlp-mnist-z2", "cnn-mnist-z2", "mlp-fashion-z2", "cnn-fashion-z2"]),
                 ("samples-per-latent-size.png", "samples", "MNIST samples per latent size "
                  "(c = 0.05)", [f"{a}-mnist-z{z}" for a in ("mlp", "cnn") for z in (1, 2, 3, 20)]),
                 ("samples-per-c.png", "samples", "MNIST samples per decoder variance c (MLP, "
                  "latent size 2)", ["mlp-mnist-z2-c1e-4", "mlp-mnist-z2", "mlp-mnist-z2-c1"])],
        note="the study's loss per image: ||x - x_hat||^2 / (2c) summed over pixels, plus the KL; "
             "nats only up to the constant D/2 log(2 pi c) it leaves out, so it is not a "
             "likelihood and does not compare across c. Train numbers are the mean over the "
             "last epoch's steps (z sampled); the study's are its final training losses"),
    "sample-quality": dict(
        title="sample quality against likelihood: VAE, VAE-GAN (batch norm or not, gamma 1 or "
              "10) and conditional VAE on MNIST and Fashion-MNIST (MLPs, d = 20; the CVAE d = 5)",
        base=[],
        settings={f"{short}-{model}": ["--dataset", dataset, *flags] for short, dataset in DATASETS.items()
                  for model, flags in SAMPLE_QUALITY_MODELS.items()},
        epochs=(10, 2), layout="final", columns=[("test loss", "test_loss")], published={},
        final=SAMPLE_QUALITY,
        figures=[("samples.png", "samples", "samples from the prior (the same z in each row of "
                  "a latent size)", [f"{d}-{m}" for d in DATASETS for m in SAMPLE_QUALITY_MODELS
                                     if m != "cvae"])],
        note="test loss: each model's own (VAE: negative ELBO; VAE-GAN: z = mu decode plus KL, "
             "not a bound; CVAE: negative ELBO given the label); NLL (IW): K = 1000 importance "
             "samples, nats per image (Bernoulli on grey levels: a cross-entropy, comparable "
             "between these runs only; the CVAE's is -log p(x | y)); FID, KID (unbiased MMD^2, "
             "cubic kernel), precision, recall (k = 3), coverage (k = 5) of 10,000 samples and "
             "FID rec of the 10,000 test reconstructions, against the 10,000 test images in "
             "the features of the dataset's domain CNN (the feature network's weights hash "
             "in its column; numbers from another hash do not compare); classes (entropy): of "
             "the classes the domain CNN gives the samples, nats (log 10 = 2.30 when all ten "
             "are drawn alike); class match: the CVAE's samples classified as the class asked"),
    "dsprites-beta": dict(
        title="what beta does to dSprites' latent space: beta-VAE at beta 1, 4, 16 and the "
              "beta-TCVAE at beta 4 (MLP 4096-512-512, latent 10, generated dSprites)",
        base=["--dataset", "dsprites", "--hidden", "512,512", "--latent-dim", "10",
              "--batch-size", "128"],
        settings={**{f"beta{b}": ["--model", "vae", "--beta", b] for b in ("1", "4", "16")},
                  "btcvae-beta4": ["--model", "btcvae", "--beta", "4"]},
        epochs=(2, 1), layout="final",
        columns=[("test recon", "test_recon"), ("test KL", "test_kl"),
                 ("active units", "test_active_units"), ("test loss", "test_loss")],
        published={}, final=DISENTANGLEMENT,
        note="test recon: BCE summed over the 4,096 pixels per image (z sampled), test KL in "
             "nats, both on the 10,000 held-out images; test loss: the negative ELBO; active "
             "units: Cov_x E[z_d | x] > 0.01; the metrics (0 to 1, higher is more "
             "disentangled; BetaVAE and FactorVAE chance is 1/5) as in disentanglement_lib on "
             "the posterior mean, from the codes of all 737,280 images (evaluate.py, GUIDE.md)"),
    "dsprites-papers": dict(
        title="disentanglement on dSprites at the papers' setup: VAE, beta-VAE (4, 16), beta-TCVAE (6) "
              "and FactorVAE (gamma 10, 40) with disentanglement_lib's conv networks (4x4 stride-2 "
              "32-32-64-64, 256, latent 10; the beta-TCVAE also with Chen et al.'s MLP 1200-1200), Adam "
              "1e-4, batch 64, 27 epochs of 11,364 steps (306,828; the papers' 300,000)",
        base=["--dataset", "dsprites", "--arch", "conv64", "--latent-dim", "10", "--lr", "1e-4",
              "--batch-size", "64"],
        settings={"vae": ["--model", "vae"], "beta-vae4": ["--model", "vae", "--beta", "4"],
                  "beta-vae16": ["--model", "vae", "--beta", "16"],
                  "btcvae-beta6": ["--model", "btcvae", "--beta", "6"],
                  "btcvae-beta6-mlp": ["--model", "btcvae", "--beta", "6", "--arch", "mlp", "--hidden",
                                       "1200,1200"],
                  "factorvae-gamma10": ["--model", "factorvae", "--gamma", "10"],
                  "factorvae-gamma40": ["--model", "factorvae", "--gamma", "40"]},
        epochs=(27, 1), layout="final",
        columns=[("test recon", "test_recon"), ("test KL", "test_kl"), ("active units", "test_active_units")],
        published={}, final=DISENTANGLEMENT,
        # Lin et al. 2020 (InfoGAN-CR), Table 1, compiling the original papers' dSprites numbers (the
        # FactorVAE rows re-run over many seeds); its beta-VAE row does not say its beta
        published_final={"vae": {"FactorVAE": "0.63 ± 0.06", "MIG": "0.10"},
                         "beta-vae4": {"FactorVAE": "0.63 ± 0.10", "MIG": "0.21"},
                         "btcvae-beta6": {"FactorVAE": "0.62 ± 0.07", "MIG": "0.45"},
                         "btcvae-beta6-mlp": {"FactorVAE": "0.62 ± 0.07", "MIG": "0.45"},
                         "factorvae-gamma10": {"FactorVAE": "0.83 ± 0.01", "MIG": "0.40"},
                         "factorvae-gamma40": {"FactorVAE": "0.82 ± 0.01", "MIG": "0.43"}},
        note="test recon: BCE summed over the 4,096 pixels (z sampled) and test KL, nats per image on "
             "the 10,000 held-out images; the metrics as disentanglement_lib (posterior mean, MIG on 20 "
             "bins over all five factors: see metrics.json's mig_conventions); published: Lin et al. "
             "2020 (InfoGAN-CR) Table 1 (beta-VAE: its beta not given; beta-TCVAE: Chen et al.'s MIG, "
             "their own estimator on 4 factors; FactorVAE: re-run, Kim & Mnih reported 0.82 and MIG "
             "0.15), on DeepMind's dSprites file; ours on the generated dSprites unless the file is in "
             "the data root (dsprites.py)"),
    "one-class": dict(
        title="one-class anomaly detection on MNIST and Fashion-MNIST (train on one class, "
              "the other nine are the anomalies): PCA, AE and VAE, MLP and conv, code size 32",
        base=["--latent-dim", "32"],
        settings={f"{short}-{c}-{model}": ["--dataset", dataset, "--classes", str(c), *flags]
                  for short, dataset in DATASETS.items()
                  for c in range(10) for model, flags in ONE_CLASS_MODELS.items()},
        epochs=(20, 2), layout="final", columns=[("test loss", "test_loss")], published={},
        final=ANOMALY, per_class=True,
        note="test loss: each model's own, on the whole test split (mostly anomalies); AUROC "
             "(0.5 is chance) of the anomaly scores over the 10,000 test images, the nine other "
             "classes positive: rec the squared reconstruction error on [0, 1] pixels, code the "
             "mean distance to the 5 nearest training codes, ELBO the negative ELBO (VAEs); "
             "epochs: 20 for the MLPs, 5 for the conv nets, 1 pass for PCA (the one class's "
             "6,000 training images; so the whole benchmark fits in about an hour here)"),
    "autoencoders": dict(
        title="the autoencoder family on MNIST (MLP 784-400-20: plain, denoising, sparse, "
              "contractive; the VAE and PCA with 20 components beside them)",
        base=["--dataset", "mnist", "--latent-dim", "20"],
        settings={"ae": ["--model", "ae"], "denoising-ae": ["--model", "ae", "--noise", "gaussian:0.5"],
                  "ae-relu-code": ["--model", "ae", "--code", "relu"],
                  "sparse-ae": ["--model", "ae", "--code", "relu", "--sparsity", "1"],
                  "contractive-ae": ["--model", "ae", "--contractive", "0.1"],
                  "vae": ["--model", "vae"], "pca": ["--model", "pca", "--epochs", "1"]},
        epochs=(10, 2), columns=[("test recon", "test_recon")], published={}, final="autoencoder",
        note="test recon is BCE summed over pixels per image (the VAE's with z sampled; PCA's "
             "is its squared error summed over pixels instead, not comparable); PSNR "
             "10 log10(1 / MSE) on [0, 1] pixels per image, averaged; the denoising AE's "
             "input is its corrupted image and its target the clean one"),
}
