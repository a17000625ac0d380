import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import normalize, synthetic_mnist

from jal.acquire.estimators import accuracy_and_nll
from jal.models import build_model
from jal.models.lenet5 import LeNet, LeNet5
from jal.train import TrainConfig, bootstrap, epoch_size, make_optimizer, train, weighted_cross_entropy

LENET = LeNet5()


def test_bootstrap_draws_only_labeled_samples():
    order = jnp.array([7, 3, 9, -1, -1, -1], jnp.int32)
    draws = np.asarray(bootstrap(jax.random.key(0), order, jnp.int32(3), 300))
    assert set(draws.tolist()) == {3, 7, 9}  # with replacement, all three show up
    # Once the labeled set fills the epoch, each labeled sample is used once.
    full = np.asarray(bootstrap(jax.random.key(0), jnp.arange(6, dtype=jnp.int32), jnp.int32(6), 6))
    np.testing.assert_array_equal(np.sort(full), np.arange(6))
    assert epoch_size(60, TrainConfig()) == 10_000 and epoch_size(12_000, TrainConfig()) == 12_000


@pytest.mark.slow
def test_padding_weights_leave_the_loss_a_mean_over_real_samples():
    logits = jax.random.normal(jax.random.key(1), (8, 10))
    labels = jnp.arange(8) % 10
    weights = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[:5], labels[:5]).mean()
    np.testing.assert_allclose(weighted_cross_entropy(logits, labels, weights), expected, rtol=1e-6)


@pytest.mark.slow
def test_loss_falls_and_the_model_learns_a_small_labeled_set():
    train_images, train_labels, test_images, test_labels = synthetic_mnist(100, 200)
    images = jnp.asarray(normalize(train_images))
    order = jnp.arange(100, dtype=jnp.int32)
    config = TrainConfig(epochs=3, min_samples_per_epoch=1024)
    params, losses = train(
        jax.random.key(0), LENET, images, jnp.asarray(train_labels, jnp.int32), order, jnp.int32(40),
        config=config, samples_per_epoch=1024,
    )  # fmt: skip
    losses = np.asarray(losses)
    assert losses.shape == (3,) and np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    logits = LeNet().apply({"params": params}, jnp.asarray(normalize(test_images)))
    accuracy, _ = accuracy_and_nll(jax.nn.log_softmax(logits), jnp.asarray(test_labels))
    assert accuracy > 0.8  # learned from 40 labels, measured on unseen samples


@pytest.mark.slow
def test_any_model_trains_the_same_way():
    train_images, train_labels, test_images, test_labels = synthetic_mnist(100, 200)
    mlp = build_model("mlp", (28, 28, 1), 10, hidden_sizes=(64,))
    config = TrainConfig(epochs=3, min_samples_per_epoch=1024)
    params, losses = train(
        jax.random.key(0), mlp, jnp.asarray(normalize(train_images)), jnp.asarray(train_labels, jnp.int32),
        jnp.arange(100, dtype=jnp.int32), jnp.int32(40), config=config, samples_per_epoch=1024,
    )  # fmt: skip
    assert np.asarray(losses)[-1] < 0.5 * np.asarray(losses)[0]
    accuracy, _ = accuracy_and_nll(mlp.log_probs(params, jnp.asarray(normalize(test_images))), test_labels)
    assert accuracy > 0.8


@pytest.mark.slow
def test_unlabeled_samples_and_padding_never_reach_training():
    train_images, train_labels, *_ = synthetic_mnist(50, 1)
    images = jnp.asarray(normalize(train_images))
    labels = jnp.asarray(train_labels, jnp.int32).at[0].set(-1)  # pool sample 0 is unlabeled
    order = jnp.arange(1, 51, dtype=jnp.int32) % 50  # ... and last in the order, past num_labeled
    config = TrainConfig(epochs=2, min_samples_per_epoch=100)  # 100 is not a multiple of 64: padding
    args = dict(config=config, samples_per_epoch=100)
    a, _ = train(jax.random.key(0), LENET, images, labels, order, jnp.int32(30), **args)
    b, _ = train(jax.random.key(0), LENET, images.at[0].set(9.0), labels.at[0].set(3), order, jnp.int32(30), **args)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_training_is_deterministic_given_the_key():
    train_images, train_labels, *_ = synthetic_mnist(50, 1)
    images, labels = jnp.asarray(normalize(train_images)), jnp.asarray(train_labels, jnp.int32)
    args = (LENET, images, labels, jnp.arange(50, dtype=jnp.int32))
    config = TrainConfig(epochs=1, min_samples_per_epoch=100)
    a, _ = train(jax.random.key(3), *args, jnp.int32(20), config=config, samples_per_epoch=100)
    b, _ = train(jax.random.key(3), *args, jnp.int32(20), config=config, samples_per_epoch=100)
    c, _ = train(jax.random.key(4), *args, jnp.int32(20), config=config, samples_per_epoch=100)
    leaves_a, leaves_b, leaves_c = map(jax.tree_util.tree_leaves, (a, b, c))
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, z) for x, z in zip(leaves_a, leaves_c, strict=True))


@pytest.mark.slow
def test_optimizer_matches_torch_adam_with_weight_decay():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (JAL_WITH_TORCH=1 bin/test installs it)")
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=5).astype(np.float32)
    grads = rng.normal(size=(6, 5)).astype(np.float32)
    config = TrainConfig()

    w = torch.tensor(w0, requires_grad=True)
    reference = torch.optim.Adam([w], lr=config.learning_rate, weight_decay=config.weight_decay)
    optimizer = make_optimizer(config)
    params = jnp.asarray(w0)
    state = optimizer.init(params)
    for g in grads:
        reference.zero_grad()
        w.grad = torch.from_numpy(g.copy())
        reference.step()
        updates, state = optimizer.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, w.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_the_padding_of_an_epochs_last_batch_carries_no_weight():
    """5 samples in batches of 4 (3 padding slots) give the loss of one batch of 5, where nothing is random."""
    model = build_model("mlp", (6,), 3, hidden_sizes=(8,), dropout_rate=0.0)
    rng = np.random.default_rng(0)
    inputs, labels = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32), jnp.asarray([0, 1, 2, 0, 1], jnp.int32)
    order = jnp.arange(5, dtype=jnp.int32)

    def epoch_loss(batch_size):
        config = TrainConfig(epochs=1, batch_size=batch_size, learning_rate=0.0, min_samples_per_epoch=5)
        _, losses = train(jax.random.key(0), model, inputs, labels, order, jnp.int32(5), config=config,
                          samples_per_epoch=5)  # fmt: skip
        return float(losses[0])

    np.testing.assert_allclose(epoch_loss(4), epoch_loss(5), rtol=1e-6)


def test_gradient_groups_add_up_to_the_whole_batchs_gradient():
    """Where nothing is random, G groups train what one batch trains, to float rounding."""
    model = build_model("mlp", (6,), 3, hidden_sizes=(8,), dropout_rate=0.0)
    rng = np.random.default_rng(1)
    inputs, labels = jnp.asarray(rng.normal(size=(40, 6)), jnp.float32), jnp.asarray(rng.integers(0, 3, 40), jnp.int32)
    order = jnp.arange(40, dtype=jnp.int32)

    def trained(groups):
        config = TrainConfig(epochs=2, batch_size=8, min_samples_per_epoch=30, groups=groups)
        return train(jax.random.key(0), model, inputs, labels, order, jnp.int32(40), config=config,
                     samples_per_epoch=40)  # fmt: skip

    (whole, whole_losses), (grouped, grouped_losses) = trained(1), trained(4)
    np.testing.assert_allclose(grouped_losses, whole_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grouped, whole)
