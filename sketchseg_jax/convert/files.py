"""Reading and writing tensor files safely.

`.safetensors` is read without torch. `.pt/.pth/.bin` go through `torch.load(weights_only=True)`
only: a checkpoint never gets to run code. TorchScript archives (OpenAI's original CLIP `.pt`)
are refused with the one-line conversion that the user can choose to run. Writes go to a
temporary sibling and are renamed into place, so an interrupted write never leaves a
half-written file or folder under the requested name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from sketchseg_jax.errors import CheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _torch_to_numpy(t) -> np.ndarray:
  import torch
  t = t.detach().cpu().contiguous()
  if t.dtype == torch.bfloat16:
    import ml_dtypes
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def _is_torchscript(path: Path) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
  return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _read_torch(path: Path) -> dict:
  if _is_torchscript(path):
    raise CheckpointError(
        f"{path}: is a TorchScript archive (as OpenAI's original CLIP .pt files are); loading it "
        "would run its code, so it is not read. Convert it once where you trust the file: "
        "python -c \"import torch,sys; m=torch.jit.load(sys.argv[1], map_location='cpu'); "
        f"torch.save(m.state_dict(), sys.argv[2])\" {path} state_dict.pt")
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(f"{path}: reading {path.suffix} files needs torch "
                          "(pip install torch); .safetensors files do not") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for truncated or foreign files
    raise CheckpointError(f"{path}: cannot be read as a PyTorch state dict "
                          f"(weights_only=True): {str(e).splitlines()[0][:300]}") from e
  # Training checkpoints often wrap the weights one level down.
  while isinstance(obj, dict) and not any(hasattr(v, "shape") for v in obj.values()):
    inner = next((obj[k] for k in ("state_dict", "model", "module", "teacher")
                  if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, dict) or not obj:
    raise CheckpointError(f"{path}: holds no state dict (a mapping of names to tensors)")
  out = {}
  for k, v in obj.items():
    if not hasattr(v, "shape"):
      raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    out[k] = _torch_to_numpy(v)
  return out


def _read_safetensors(path: Path) -> dict:
  from safetensors.numpy import load_file
  try:
    return load_file(str(path))
  except Exception as e:
    raise CheckpointError(f"{path}: not a readable .safetensors file "
                          f"(truncated or corrupt?): {e}") from e


def read_tensors(path) -> dict:
  """Name -> numpy array from one file, or from a folder's (possibly sharded) weights."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or folder")
  if path.is_dir():
    index = path / "model.safetensors.index.json"
    if index.exists():
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
      out = {}
      for shard in shards:
        out.update(_read_safetensors(path / shard))
      return out
    for name in ("model.safetensors", "params.safetensors", "pytorch_model.bin"):
      if (path / name).exists():
        return read_tensors(path / name)
    raise CheckpointError(f"{path}: folder holds no model.safetensors, "
                          "model.safetensors.index.json or pytorch_model.bin")
  if path.stat().st_size == 0:
    raise CheckpointError(f"{path}: file is empty")
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  if path.suffix in TORCH_SUFFIXES:
    return _read_torch(path)
  raise CheckpointError(f"{path}: unknown weight file type {path.suffix!r}; expected "
                        f".safetensors or one of {TORCH_SUFFIXES}")


def read_safetensors_metadata(path) -> dict:
  """The string metadata of a .safetensors file ({} for other files or none stored)."""
  path = Path(path)
  if path.suffix != ".safetensors" or not path.is_file():
    return {}
  from safetensors import safe_open
  try:
    with safe_open(str(path), framework="np") as f:
      return dict(f.metadata() or {})
  except Exception as e:
    raise CheckpointError(f"{path}: not a readable .safetensors file "
                          f"(truncated or corrupt?): {e}") from e


def read_json(path) -> dict:
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as e:
    raise CheckpointError(f"{path}: no such file") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e


@contextlib.contextmanager
def atomic_output(dest, is_dir: bool):
  """Yields a temporary path beside `dest`; on success it replaces `dest` in one rename."""
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  if is_dir:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
  else:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
  try:
    yield tmp
    if is_dir and dest.exists():
      old = dest.with_name(f".{dest.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      dest.rename(old)
      tmp.rename(dest)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, dest)
  except BaseException:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      tmp.unlink(missing_ok=True)
    raise


def write_safetensors(tensors: Mapping[str, np.ndarray], path, metadata=None):
  from safetensors.numpy import save_file
  arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
  with atomic_output(path, is_dir=False) as tmp:
    save_file(arrays, str(tmp), metadata=metadata)


def _numpy_to_torch(a: np.ndarray):
  import torch
  a = np.ascontiguousarray(np.asarray(a))
  if a.dtype.name == "bfloat16":
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def write_torch(tensors: Mapping[str, np.ndarray], path):
  """A plain `torch.save` state dict, loadable with weights_only=True."""
  import torch
  sd = {k: _numpy_to_torch(v) for k, v in tensors.items()}
  with atomic_output(path, is_dir=False) as tmp:
    torch.save(sd, tmp)
