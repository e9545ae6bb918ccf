"""compile.compiled: weights frozen in at the first call, the global inductor config left as it was."""

import threading

import pytest
import torch

from clockwork_engine.compile import MODULE_OPTIONS, STEP_OPTIONS, compiled


@pytest.mark.parametrize("options", [MODULE_OPTIONS, STEP_OPTIONS], ids=["module", "step"])
def test_weights_are_frozen_in_and_the_config_is_restored(options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1)).eval()
    run = compiled(lambda x: net(x), options, "test net")
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        first = run(x)
        torch.testing.assert_close(first, net(x), rtol=1e-5, atol=1e-5)
        # Frozen: the program keeps the weights of its first call. (When only the options asked
        # for freezing, Dynamo left the weights as graph inputs and this changed the output.)
        net[0].weight.add_(1.0)
        assert torch.equal(run(x), first)
    assert torch._inductor.config.freezing is False


def test_threads_leave_the_global_config_unchanged():
    net = torch.nn.Linear(8, 8).eval()
    run = compiled(lambda x: net(x), MODULE_OPTIONS, "test linear")
    x = torch.randn(2, 8)
    with torch.no_grad():
        run(x)  # compile once, then call from many threads
        threads = [threading.Thread(target=lambda: [run(x) for _ in range(50)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert torch._inductor.config.freezing is False
