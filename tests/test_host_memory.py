"""skipvit_jax.runtime.host_memory: a freed step-sized block is reused, not unmapped and faulted
back in."""

import os
import subprocess
import sys
import textwrap

import pytest

from skipvit_jax.runtime import host_memory

# A worker thread (as XLA's are) allocates, touches and frees a 140 MB block ten times, like
# ten training steps' temporaries; prints the page faults that took.
_STEPS = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys, threading
    from skipvit_jax.runtime import host_memory
    applied = host_memory.retain_freed_memory() if sys.argv[1] == "retain" else False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 140 * 2**20
    def steps():  # plain malloc, as XLA's allocations are (numpy's ask for huge pages)
      for _ in range(10):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    worker = threading.Thread(target=steps)
    worker.start()
    worker.join()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str) -> tuple[bool, int]:
  env = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _STEPS, mode], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc: Linux only")
@pytest.mark.slow
def test_a_freed_block_is_reused_not_faulted_in_again():
  applied, retained = _page_faults("retain")
  _, system = _page_faults("system")
  assert applied
  # glibc's defaults map and unmap the block each time: ten blocks' worth of fresh pages
  # (fewer where the kernel hands out huge pages). Retained, only the first block faults in.
  assert retained < system / 4, (retained, system)


def test_only_on_cpu_only_hosts(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not host_memory.cpu_only_host()
  assert not host_memory.retain_freed_memory()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.cpu_only_host()


def test_the_users_own_malloc_settings_win(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for name in host_memory.USER_SETTINGS:
    with monkeypatch.context() as patch:
      patch.setenv(name, "1")
      assert not host_memory.retain_freed_memory()
      assert host_memory.tune_malloc() is None


# Two loader threads each take 200 images' temporaries (a decoded image of one of ImageNet's
# common sizes, its crop, two float copies: about 2.4 MB), touch them and free them all, as
# the host path of the input pipeline does per image; prints the page faults per image.
_IMAGES = textwrap.dedent("""
    import ctypes, ctypes.util, random, resource, sys, threading
    from skipvit_jax.runtime import host_memory
    applied = host_memory.apply(host_memory.LOADER) if sys.argv[1] == "loader" else False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def images(seed):
      rng = random.Random(seed)
      for _ in range(200):
        height, width = rng.choice([(375, 500), (500, 375), (333, 500), (500, 500)])
        sizes = (height * width * 3, 224 * 224 * 3, 224 * 224 * 12, 224 * 224 * 12)
        blocks = [libc.malloc(size) for size in sizes]
        for block, size in zip(blocks, sizes):
          ctypes.memset(block, 1, size)
        for block in blocks:
          libc.free(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    workers = [threading.Thread(target=images, args=(seed,)) for seed in range(2)]
    for worker in workers:
      worker.start()
    for worker in workers:
      worker.join()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 400)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc: Linux only")
@pytest.mark.slow
def test_loader_threads_reuse_an_images_memory_with_the_loader_setting():
  env = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}
  run = lambda mode: subprocess.run([sys.executable, "-c", _IMAGES, mode], env=env, check=True,
                                    capture_output=True, text=True).stdout.split()
  applied, loader = run("loader")
  _, system = run("system")
  assert applied == "True"
  # glibc's defaults trim each thread's arena once the image's blocks are freed (its trim
  # threshold follows the mmap threshold, a block's size), so the next image faults its pages
  # in afresh: about a hundred per image. With LOADER only the arenas' first growth faults.
  assert float(loader) < 10 < float(system), (loader, system)


def test_each_host_gets_its_setting(monkeypatch):
  applied = []
  monkeypatch.setattr(host_memory, "apply", lambda settings: applied.append(settings) or True)
  for name in host_memory.USER_SETTINGS:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.tune_malloc() == "retain" and applied == [host_memory.RETAIN]
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host_memory.tune_malloc() == "loader" and applied[1:] == [host_memory.LOADER]
