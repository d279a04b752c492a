"""Train a small binary network on generated data and report its accuracy.

The quick start's built-in default: needs no data files and finishes in about a minute on two
cores. Each class is a random 3x16x16 prototype; samples are the prototype plus Gaussian noise,
so the task is learnable but not trivial at high noise. The net has a full-precision stem and
head, as in the papers, with two binary 3x3 convolutions (BatchNorm -> sign -> binary conv)
between them.
"""
import argparse
import json
import time

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

import bmx


def make_data(classes, per_class, noise, seed):
    rng = np.random.RandomState(seed)
    prototypes = rng.randn(classes, 3, 16, 16).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class)
    images = prototypes[labels] + noise * rng.randn(len(labels), 3, 16, 16).astype(np.float32)
    order = rng.permutation(len(labels))
    return images[order], labels[order].astype(np.float32)


def small_binary_net(classes, clip_threshold):
    net = nn.HybridSequential(prefix="demo_")
    with net.name_scope():
        net.add(nn.Conv2D(32, 3, padding=1, use_bias=False, in_channels=3),
                nn.BatchNorm(in_channels=32))
        with bmx.binary_layer_config(clip_threshold=clip_threshold):
            for _ in range(2):
                net.add(nn.BatchNorm(in_channels=32),
                        bmx.nn.BinaryConvolution(32, 3, padding=1, in_channels=32))
        net.add(nn.BatchNorm(in_channels=32), nn.Activation("relu"), nn.MaxPool2D(2),
                nn.GlobalAvgPool2D(), nn.Dense(classes, in_units=32))
    return net


def accuracy(net, data, labels, batch_size):
    metric = mx.metric.Accuracy()
    for start in range(0, len(labels), batch_size):
        x = mx.nd.array(data[start:start + batch_size])
        metric.update(mx.nd.array(labels[start:start + batch_size]), net(x))
    return metric.get()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--clip-threshold", type=float, default=1.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mx.random.seed(args.seed)
    images, labels = make_data(args.classes, args.per_class, args.noise, args.seed)
    split = len(labels) * 4 // 5
    train_x, train_y, val_x, val_y = images[:split], labels[:split], images[split:], labels[split:]

    net = small_binary_net(args.classes, args.clip_threshold)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.hybridize(static_alloc=True)
    trainer = mx.gluon.Trainer(net.collect_params(), "adam", {"learning_rate": args.lr})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()

    start = time.time()
    for epoch in range(args.epochs):
        order = np.random.RandomState(args.seed + epoch).permutation(split)
        total = 0.0
        for b in range(0, split, args.batch_size):
            idx = order[b:b + args.batch_size]
            x, y = mx.nd.array(train_x[idx]), mx.nd.array(train_y[idx])
            with mx.autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(len(idx))
            total += loss.sum().asscalar()
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {total / split:.3f}  "
              f"val accuracy {accuracy(net, val_x, val_y, 256):.3f}", flush=True)
    result = {"val_accuracy": accuracy(net, val_x, val_y, 256),
              "train_accuracy": accuracy(net, train_x, train_y, 256),
              "chance": 1.0 / args.classes, "seconds": round(time.time() - start, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
