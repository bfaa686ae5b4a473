"""Feature spaces for the sample-quality metrics (metrics.fid, kid, manifold_metrics) and those
metrics for a model (sample_quality); numbers carry the network's name, weights hash and counts,
as others do not compare. The domain network: a small CNN classifier trained on the dataset's
training split on first use (fixed seed; minutes on a CPU), cached in <data root>/features/ by
the data's hash; its 128 features before the last layer (Inception's mean little on 28x28
digits). Inception v3 (torchvision's ImageNet weights), 2048 pool features, for RGB data; papers
mostly use the FID code's TensorFlow Inception: expect the same trends, not the same digits.
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
    """On [0, 1] images, normalised: 3x3 stride-2 convolutions (batch norm, ReLU) of 32, 64, ... channels
    to side <= 4, a 3x3 one, average pooling, linear to FEATURES + ReLU (the features), dropout, logits."""

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
    """(DomainNet trained on (uint8 images, labels) from SEED, in eval mode; its test accuracy); only RGB
    is flipped and cropped as CIFAR-10 (a shift costs grey Fashion-MNIST 1% of accuracy)."""
    images, labels = train
    rgb = images.shape[1] == 3
    with torch.random.fork_rng(devices=[]):  # its own seed; the caller's generator untouched
        torch.manual_seed(SEED)
        net = DomainNet(images.shape[1:], num_classes).to(images.device)
        unit = next(data.batches(images[:10000], labels[:10000], 10000))[0]  # [0, 1]
        net.mean.copy_(unit.mean((0, 2, 3)).view(-1, 1, 1))
        net.std.copy_(unit.std((0, 2, 3)).clamp_min(1e-3).view(-1, 1, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt, 3e-3, total_steps=epochs * math.ceil(len(images) / batch_size))
        t0 = time.perf_counter()
        for epoch in range(epochs):
            net.train()
            for x, _, y in data.batches(images, labels, batch_size, shuffle=True, hflip=rgb, crop=rgb):
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
            if epoch == 0:
                say(f"  feature network: epoch 1 of {epochs} took {time.perf_counter() - t0:.0f} s")
    net.eval()
    with torch.no_grad():
        hits = sum((net(x).argmax(1) == y).sum().item() for x, _, y in data.batches(*test, 1000))
    return net, hits / len(test[1])


def domain_network(dataset, root, splits, num_classes, say=print):
    """(DomainNet on the CPU, info) from root/features/ if trained on these very data, else trained
    (about 300,000 images seen: 5 epochs of MNIST; 3 to 60) and cached."""
    train, test = splits["train"], splits["test"]
    identity = data.identity({"train": train})["train"][1]
    path = os.path.join(root, "features", f"{dataset.partition(':')[0]}-{identity}-v{FORMAT}.pt")
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = DomainNet(saved["image_shape"], saved["num_classes"])
        net.load_state_dict(saved["state"])
        return net.eval(), saved["info"]
    epochs = max(3, min(60, round(300_000 / len(train[0]))))
    say(f"Training the feature network of {dataset} for the sample-quality metrics (once; {epochs} "
        f"epochs on its {len(train[0]):,} training images; cached in {os.path.dirname(path)})")
    t0 = time.perf_counter()
    net, acc = train_domain_net(train, test, num_classes, epochs, say=say)
    info = {"name": f"domain CNN of {dataset}", "hash": weights_hash(net.cpu()),
            "test_accuracy": round(acc, 4), "epochs": epochs, "train_images": len(train[0]),
            "data_hash": identity, "seconds": round(time.perf_counter() - t0, 1)}
    say(f"  feature network {info['hash']}: test accuracy {100 * acc:.2f}% after {info['seconds']:.0f} s")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"state": net.state_dict(), "image_shape": list(net.image_shape),
                    "num_classes": num_classes, "info": info}, path + ".tmp")
        os.replace(path + ".tmp", path)
    except OSError as e:
        say(f"  (not cached: {path}: {e.strerror}; it will be trained again next time)")
    return net, info


def inception(weights="download"):
    """(Inception v3 without its last layer, info) or (None, why not), of weights "download"
    (torchvision's ImageNet weights, cached by torch) or a path to an inception_v3 state dict."""
    import torchvision
    skipped, state = "; its numbers are skipped", None
    if weights != "download" and not os.path.isfile(weights):
        return None, f"--inception-weights {weights}: no such file" + skipped
    url = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url
    try:
        state = (torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
                 if weights == "download" else torch.load(weights, map_location="cpu", weights_only=True))
        # as torchvision builds it for its ImageNet weights
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                              transform_input=True)
        net.load_state_dict(state)
    except Exception as e:  # offline (URLError, OSError, ...), not a torch file, or other weights
        why = type(e).__name__
        if state is not None:
            return None, (f"{'the downloaded weights' if weights == 'download' else weights}: not a state "
                          f"dict of torchvision's inception_v3 ({why})" + skipped)
        if weights != "download":
            return None, f"--inception-weights {weights}: not a state dict ({why})" + skipped
        reason = (str(e).strip().splitlines() or [why])[0][:100]
        return None, (f"Inception v3 weights could not be downloaded ({reason}){skipped}: pass --inception-"
                      f"weights PATH (a state dict of torchvision's inception_v3) to have them offline")
    net.fc = nn.Identity()
    return net.eval(), {"name": "Inception v3 (torchvision, IMAGENET1K_V1), 2048 pool features",
                        "hash": weights_hash(net)}


class InceptionFeatures(nn.Module):
    """Images in [0, 1] of any size, 1 or 3 channels -> Inception's (B, 2048) pool features:
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
    """[(metric name suffix, network, info, test features)]: the domain network for labelled data;
    Inception for RGB (grey too given a weights file) unless weights is "none"."""
    spaces, test = [], splits["test"][0]
    if data.ground_truth(cfg["dataset"], splits) is not None:
        print(f"{cfg['dataset']}: sample quality is not measured (no feature network for a factor grid)")
        return []
    if cfg["num_classes"]:
        net, info = domain_network(cfg["dataset"], root, splits, cfg["num_classes"])
        spaces.append(("", net.to(device), info))
        print(f"Sample quality in the features of the {info['name']} (weights {info['hash']}, "
              f"test accuracy {100 * info['test_accuracy']:.2f}%)")
    else:
        print(f"{cfg['dataset']} has no labels, so no domain network: sample quality only in Inception's")
    if weights != "none" and (test.shape[1] == 3 or weights != "download"):
        net, info = inception(weights)
        if net is None:
            print(info)
        else:
            spaces.append(("_inception", InceptionFeatures(net).to(device), info))
    real = embed([space[:2] for space in spaces], (x for x, *_ in data.batches(*splits["test"], 500)))[0]
    return [(suffix, net, info, real[suffix]) for suffix, net, info in spaces]


@torch.no_grad()
def embed(spaces, batches):
    """({suffix: (N, F) float64 features}, the domain logits or None) of batches of [0, 1] images."""
    found, logits = {suffix: [] for suffix, *_ in spaces}, []
    for x in batches:
        for suffix, net, *_ in spaces:
            f = net.features(x)
            found[suffix].append(f.double())
            if suffix == "":
                logits.append(net.head(f))
    return {k: torch.cat(v) for k, v in found.items()}, torch.cat(logits) if logits else None


@torch.no_grad()
def sampler_key(name):
    """The metrics' infix for a sampler (samplers.py): none for the prior, "_gmm", "_two_stage"."""
    return "" if name == "prior" else "_" + name.replace("-", "_")


def sample_quality(model, cfg, split, spaces, n, seed, draws=None):
    """Per space: FID, KID, manifold metrics of n samples of each sampler in draws ({name: draw(n,
    generator, labels)}, default the prior; keys fid, fid_gmm, ...) and the FID of the test
    reconstructions, against the test images; the classifier's view; "features": what compared."""
    m, about, t0, fakes, asked = {}, {}, time.perf_counter(), {}, model.default_labels(n)
    for name, draw in (draws or {"prior": model.sample}).items():
        gen = torch.Generator().manual_seed(seed)
        drawn = (draw(min(1000, n - i), gen, None if asked is None else asked[i:i + 1000]) for i in range(0, n, 1000))
        first = next(drawn)
        if first is None:  # the model has no prior (an AE)
            continue
        fakes[name], logits = embed(spaces, (data.to_unit(images, model.output).clamp(0, 1)
                                             for images in itertools.chain([first], drawn)))
        if logits is not None:
            m.update({k + sampler_key(name): v for k, v in metrics.classifier_view(logits, asked).items()})
    noise = data.parse_noise(cfg["noise"])
    recons = embed(spaces, (data.to_unit(model.reconstruct(x, y), cfg["output"]).clamp(0, 1)
                            for x, _, y in data.eval_batches(split, cfg["output"], noise, batch_size=500)))[0]
    for suffix, net, info, real in spaces:
        for name, fake in fakes.items():
            s = sampler_key(name) + suffix
            m["fid" + s] = metrics.fid(real, fake[suffix])
            m["kid" + s], m["kid_std" + s] = metrics.kid(real, fake[suffix])
            m.update({k + s: v for k, v in metrics.manifold_metrics(real, fake[suffix]).items()})
        m["fid_recon" + suffix] = metrics.fid(real, recons[suffix])
        about["inception" if suffix else "domain"] = {**info, "samples": n if fakes else 0,
                                                      "samplers": list(fakes), "test_images": len(real)}
    m["features"] = about
    print(f"  sample quality: {n if fakes else 0:,} samples of {', '.join(fakes) or 'no sampler'} and "
          f"{len(split[0]):,} reconstructions against the test images, {time.perf_counter() - t0:.1f} s",
          flush=True)
    return m
