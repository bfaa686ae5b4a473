"""Feature spaces for the sample-quality metrics (metrics.fid, kid, manifold_metrics), and
those metrics measured in them for one model (sample_quality, which evaluate.py calls).

FIDs from different feature networks, or from different sample counts, do not compare, so
every number measured here carries the network's name, the hash of its weights and the
counts (evaluate.py writes them beside the numbers).

- The domain network: a small CNN classifier trained here on the dataset's own training
  split, from a fixed seed, on first use (a few minutes on a CPU), then cached in
  <data root>/features/, named by the hash of the data it learned from: other data, or a
  changed file, train a new one. Its feature space is the 128 values before the last
  layer. Inception features mean little on 28x28 digits; this is how MNIST-scale work
  measures samples.
- Inception v3 with torchvision's ImageNet weights: the 2048 pool features, for RGB data,
  so CIFAR-10 and CelebA numbers compare with papers' (which mostly use the TensorFlow
  Inception of the original FID code: expect the same trends, not the same digits).
"""
import hashlib
import itertools
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import metrics

FEATURES = 128  # the domain network's feature size
SEED = 0  # its weights' seed, whatever --seed
FORMAT = 1  # bump when the network or its training changes: older caches are retrained


class DomainNet(nn.Module):
    """3x3 convolutions of stride 2 (each with batch norm and ReLU), 32, 64, 128, ...
    channels, until the side is 4 pixels or less; a 3x3 convolution of stride 1; global
    average pooling; a linear layer to FEATURES with ReLU (the feature space); dropout; the
    class logits. Takes images in [0, 1]; normalises them itself."""

    def __init__(self, image_shape, num_classes):
        super().__init__()
        C, H, W = image_shape
        layers, width, side = [], C, min(H, W)
        while side > 4:
            out = min(256, 32 * 2 ** (len(layers) // 3))
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU()]
            width, side = out, (side + 1) // 2
        self.body = nn.Sequential(*layers, nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(width, FEATURES), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, num_classes))
        self.register_buffer("mean", torch.zeros(C, 1, 1))
        self.register_buffer("std", torch.ones(C, 1, 1))
        self.image_shape, self.num_classes = tuple(image_shape), num_classes

    def features(self, x):  # (B, C, H, W) in [0, 1] -> (B, FEATURES)
        return self.body((x - self.mean) / self.std)

    def forward(self, x):  # -> class logits (B, num_classes)
        return self.head(self.features(x))


def weights_hash(net):
    """12 hex digits of blake2b over the state dict: names a feature space exactly."""
    h = hashlib.blake2b(digest_size=6)
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_domain_net(train, test, num_classes, epochs, batch_size=128, say=print):
    """A DomainNet trained on train = (uint8 images (N, C, H, W), labels) for `epochs`
    epochs: AdamW with a one-cycle learning rate (peak 3e-3), label smoothing 0.1, from SEED;
    RGB images flipped and cropped (4-pixel padding) at random, as for CIFAR-10 (a shift
    costs grey Fashion-MNIST 1% of accuracy). Returns it in evaluation mode and its test
    accuracy."""
    images, labels = train
    rgb = images.shape[1] == 3
    with torch.random.fork_rng(devices=[]):  # its own seed; the caller's generator untouched
        torch.manual_seed(SEED)
        net = DomainNet(images.shape[1:], num_classes).to(images.device)
        unit = next(data.batches(images[:10000], labels[:10000], 10000))[0]  # [0, 1]
        net.mean.copy_(unit.mean((0, 2, 3)).view(-1, 1, 1))
        net.std.copy_(unit.std((0, 2, 3)).clamp_min(1e-3).view(-1, 1, 1))
        steps = epochs * math.ceil(len(images) / batch_size)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            net.train()
            for x, _, y in data.batches(images, labels, batch_size, shuffle=True, hflip=rgb,
                                        crop=rgb):
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
            if epoch == 0:
                say(f"  feature network: epoch 1 of {epochs} took {time.perf_counter() - t0:.0f} s")
    net.eval()
    return net, accuracy(net, *test)


@torch.no_grad()
def accuracy(net, images, labels):
    """The fraction of uint8 images that `net` labels as `labels`."""
    hits = sum((net(x).argmax(1) == y).sum().item()
               for x, _, y in data.batches(images, labels, 1000))
    return hits / len(labels)


def epochs_for(n):
    """Epochs of the domain network for a training split of n images: about 300,000 images
    seen (5 epochs of MNIST's 60,000), at least 3, at most 60."""
    return max(3, min(60, round(300_000 / n)))


def cache_path(root, dataset, identity):
    kind = dataset.partition(":")[0] if ":" in dataset else dataset
    return os.path.join(root, "features", f"{kind}-{identity}-v{FORMAT}.pt")


def domain_network(dataset, root, splits, num_classes, say=print):
    """(the dataset's DomainNet on the CPU, {name, hash, test_accuracy, ...}): loaded from the
    cache in root/features/ when it holds one trained on these very data, else trained now
    and saved there. splits: data.load's, with labels; the train split trains it, the test
    split measures its accuracy."""
    train, test = splits["train"], splits["test"]
    identity = data.identity({"train": train})["train"][1]
    path = cache_path(root, dataset, identity)
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = DomainNet(saved["image_shape"], saved["num_classes"])
        net.load_state_dict(saved["state"])
        return net.eval(), saved["info"]
    epochs = epochs_for(len(train[0]))
    say(f"Training the feature network of {dataset} for the sample-quality metrics (once; "
        f"{epochs} epochs on its {len(train[0]):,} training images; cached in "
        f"{os.path.dirname(path)})")
    t0 = time.perf_counter()
    net, acc = train_domain_net(train, test, num_classes, epochs, say=say)
    net = net.cpu()
    info = {"name": f"domain CNN of {dataset}", "hash": weights_hash(net),
            "test_accuracy": round(acc, 4), "epochs": epochs, "train_images": len(train[0]),
            "data_hash": identity, "seconds": round(time.perf_counter() - t0, 1)}
    say(f"  feature network {info['hash']}: test accuracy {100 * acc:.2f}% after "
        f"{info['seconds']:.0f} s")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        torch.save({"state": net.state_dict(), "image_shape": list(net.image_shape),
                    "num_classes": num_classes, "info": info}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        say(f"  (not cached: {path}: {e.strerror}; it will be trained again next time)")
    return net, info


INCEPTION_NAME = "Inception v3 (torchvision, IMAGENET1K_V1), 2048 pool features"


def inception(weights="download"):
    """(torchvision's Inception v3 with its last layer removed, info) or (None, why not):
    weights "download" takes torchvision's ImageNet weights (downloaded once into torch's
    cache), a path loads a state dict saved from torchvision.models.inception_v3."""
    import torchvision
    if weights == "download":
        url = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
        except Exception as e:  # offline: URLError, OSError, RuntimeError
            reason = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
            return None, (f"Inception v3 weights could not be downloaded ({reason}); its "
                          f"numbers are skipped: pass --inception-weights PATH (a state dict "
                          f"of torchvision's inception_v3) to have them offline")
    elif not os.path.isfile(weights):
        return None, f"--inception-weights {weights}: no such file; its numbers are skipped"
    else:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            return None, (f"--inception-weights {weights}: not a state dict ({type(e).__name__}); "
                          f"its numbers are skipped")
    # as torchvision builds it for its ImageNet weights
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                          transform_input=True)
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        return None, (f"{'the downloaded weights' if weights == 'download' else weights}: not a "
                      f"state dict of torchvision's inception_v3 ({type(e).__name__}); its "
                      f"numbers are skipped")
    net.fc = nn.Identity()
    return net.eval(), {"name": INCEPTION_NAME, "hash": weights_hash(net)}


class InceptionFeatures(nn.Module):
    """Images in [0, 1] of any size and 1 or 3 channels -> Inception's (B, 2048) pool features:
    grey repeated to RGB, resized to 299x299 (bilinear), ImageNet-normalised."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def features(self, x):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


def spaces_for(cfg, splits, root, device, weights="download"):
    """[(suffix of its metric names, network, info, the test images' features)] for the
    sample-quality metrics: the dataset's domain network when its data have labels (trained
    and cached on first use), and Inception v3 for RGB data (grey data too when given its
    weights as a file) unless weights is "none" (evaluate.py's --inception-weights)."""
    spaces, test = [], splits["test"][0]
    if data.ground_truth(cfg["dataset"], splits) is not None:
        print(f"{cfg['dataset']}: sample quality is not measured (no feature network for its "
              f"factor grid); its disentanglement is")
        return []
    if cfg["num_classes"]:
        net, info = domain_network(cfg["dataset"], root, splits, cfg["num_classes"])
        spaces.append(("", net.to(device), info))
        print(f"Sample quality in the features of the {info['name']} (weights {info['hash']}, "
              f"test accuracy {100 * info['test_accuracy']:.2f}%)")
    else:
        print(f"{cfg['dataset']} has no labels, so no domain feature network: sample quality "
              f"only in Inception's features, where its weights are at hand")
    if weights != "none" and (test.shape[1] == 3 or weights != "download"):
        net, info = inception(weights)
        if net is None:
            print(info)
        else:
            spaces.append(("_inception", InceptionFeatures(net).to(device), info))
    return [(suffix, net, info, embed([(suffix, net)], data.batches(*splits["test"], 500))[0][suffix])
            for suffix, net, info in spaces]


@torch.no_grad()
def embed(spaces, batches):
    """({suffix: (N, F) float64 features}, the domain network's logits or None) of batches
    (images in [0, 1] first in each)."""
    found, logits = {suffix: [] for suffix, *_ in spaces}, []
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        for suffix, net, *_ in spaces:
            f = net.features(x)
            found[suffix].append(f.double())
            if suffix == "":
                logits.append(net.head(f))
    return {k: torch.cat(v) for k, v in found.items()}, torch.cat(logits) if logits else None


@torch.no_grad()
def sample_quality(model, cfg, split, spaces, n, seed):
    """FID, KID, precision, recall, density and coverage of n samples from the prior (when
    the model samples) against the test images, in each feature space; the FID of the
    test images' reconstructions (from the inputs of the test loss); the domain
    classifier's view of the samples; and what was compared ("features")."""
    m, about, t0 = {}, {}, time.perf_counter()
    fakes, gen, asked = None, torch.Generator().manual_seed(seed), model.default_labels(n)
    drawn = (model.sample(min(1000, n - i), gen, None if asked is None else asked[i:i + 1000])
             for i in range(0, n, 1000))
    first = next(drawn)
    if first is not None:  # None: the model has no prior (an AE)
        fakes, logits = embed(spaces, (data.to_unit(images, model.output).clamp(0, 1)
                                       for images in itertools.chain([first], drawn)))
        if logits is not None:
            m.update(metrics.classifier_view(logits, asked))
    recons = embed(spaces, (data.to_unit(model.reconstruct(x, y), cfg["output"]).clamp(0, 1)
                            for x, _, y in data.eval_batches(split, cfg["output"],
                                                             data.parse_noise(cfg["noise"]),
                                                             batch_size=500)))[0]
    for suffix, net, info, real in spaces:
        if fakes is not None:
            fake = fakes[suffix]
            m["fid" + suffix] = metrics.fid(real, fake)
            m["kid" + suffix], m["kid_std" + suffix] = metrics.kid(real, fake)
            m.update({k + suffix: v for k, v in metrics.manifold_metrics(real, fake).items()})
        m["fid_recon" + suffix] = metrics.fid(real, recons[suffix])
        about["inception" if suffix else "domain"] = {**info, "samples": n if fakes is not None
                                                      else 0, "test_images": len(real)}
    m["features"] = about
    print(f"  sample quality: {n if fakes is not None else 0:,} samples and "
          f"{len(split[0]):,} reconstructions against the test images, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return m
