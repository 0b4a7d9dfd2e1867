"""Where settings apply: per call, per block of a thread or asyncio task, per process
(``configure``), and in compiled code."""

import asyncio
import threading

import pytest
import torch
import torch._dynamo

import structprune_triton
from structprune_triton import Settings, configure, current_settings, settings, use_backend
from structprune_triton import launch as launch_module

from .helpers import DEVICE, KERNELS, random_mask

DEFAULT = Settings()


@pytest.fixture
def restore_default():
    """configure() changes the process default: put it back after the test."""
    saved = current_settings()
    assert saved == DEFAULT
    yield
    configure(**{f: getattr(saved, f) for f in Settings.__dataclass_fields__})


def run_threads(*targets):
    errors = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # re-raised in the main thread
                errors.append(e)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]


def test_blocks_of_two_threads_do_not_mix():
    """Two threads, each inside its own block, interleaved step by step: each sees its own
    settings throughout; both see the default after their blocks, and so does the main thread."""
    barrier = threading.Barrier(2, timeout=30)
    seen = {"a": [], "b": []}

    def body(name, **changes):
        def run():
            barrier.wait()
            with settings(**changes):
                for _ in range(3):
                    barrier.wait()  # the other thread is inside its block now too
                    seen[name].append(current_settings())
            barrier.wait()  # both blocks closed
            seen[name].append(current_settings())

        return run

    run_threads(body("a", backend="torch"), body("b", exact_zeros=False, interpreter_tile=8))
    assert seen["a"][:3] == [Settings(backend="torch")] * 3
    assert seen["b"][:3] == [Settings(exact_zeros=False, interpreter_tile=8)] * 3
    assert seen["a"][3] == seen["b"][3] == DEFAULT
    assert current_settings() == DEFAULT


def test_asyncio_tasks_keep_their_own_blocks():
    async def task(name, event_in, event_out, **changes):
        with settings(**changes):
            event_out.set()
            await event_in.wait()  # the other task runs (and opens its block) meanwhile
            inside = current_settings()
        return name, inside, current_settings()

    async def main():
        a_ready, b_ready = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(
            task("a", b_ready, a_ready, backend="torch"),
            task("b", a_ready, b_ready, exact_zeros=False),
        )

    results = asyncio.run(main())
    assert results == [
        ("a", Settings(backend="torch"), DEFAULT),
        ("b", Settings(exact_zeros=False), DEFAULT),
    ]


def test_configure_sets_the_default_outside_blocks(restore_default):
    """configure() changes what every thread sees outside its blocks; an open block keeps the
    settings it opened with, and a new block starts from the new default."""
    seen = {}
    with settings(interpreter_tile=8) as block:
        configure(exact_zeros=False)
        seen["block"] = current_settings()
        run_threads(lambda: seen.setdefault("thread", current_settings()))
        with settings(poison_outputs=True):
            seen["nested"] = current_settings()
    seen["after"] = current_settings()
    assert seen["block"] is block and block == Settings(interpreter_tile=8)
    assert seen["thread"] == seen["after"] == Settings(exact_zeros=False)
    assert seen["nested"] == Settings(interpreter_tile=8, poison_outputs=True)


def test_per_call_settings_win_over_blocks():
    x = torch.randn(4, 3, device=DEVICE)
    x[1] = float("nan")
    mask = torch.tensor([True, False, True, True], device=DEVICE)
    upstream = mask[:, None] * x
    with use_backend("triton" if KERNELS else "torch"):
        out = structprune_triton.row_mask(x, mask, settings=Settings(backend="torch", exact_zeros=False))
    torch.testing.assert_close(out, upstream, rtol=0, atol=0, equal_nan=True)
    assert out[1].isnan().all()


@pytest.mark.skipif(not KERNELS, reason="no Triton kernels on this machine")
def test_compiled_model_sees_its_threads_block(monkeypatch):
    """A compiled function run in a thread inside use_backend("torch") runs no kernel, while the
    main thread, outside any block and at the same time, runs the kernels with the same function."""
    launched = []
    run = launch_module.Launch.run
    monkeypatch.setattr(launch_module.Launch, "run", lambda self: (launched.append(threading.get_ident()), run(self)))
    torch._dynamo.reset()
    lin = structprune_triton.prepare_module(torch.nn.Linear(6, 8).to(DEVICE), random_mask(8, density=0.5))
    compiled = torch.compile(lin, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 6, device=DEVICE)
    launched.clear()  # preparing the module ran the kernels too
    ran, done = threading.Event(), threading.Event()
    outputs = {}

    def in_block():
        with use_backend("torch"):
            outputs["thread"] = compiled(x)
            ran.set()
            done.wait(timeout=120)  # the block stays open while the main thread runs

    def main_thread():
        ran.wait(timeout=120)
        outputs["main"] = compiled(x)
        done.set()

    worker = threading.Thread(target=in_block)
    worker.start()
    main_thread()
    worker.join(timeout=120)
    main_id, worker_id = threading.get_ident(), worker.ident
    assert worker_id not in launched and main_id in launched
    torch.testing.assert_close(outputs["thread"], outputs["main"], rtol=0, atol=0)
    torch.testing.assert_close(outputs["main"], lin(x), rtol=0, atol=0)
