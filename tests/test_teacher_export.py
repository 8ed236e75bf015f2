"""SBIR teacher export: the PyTorch reference built from the exported folder gives the Flax
teacher's photo and sketch embeddings (1e-4) for shared and separate towers, shallow, deep and
no prompts, CLS and mean pooling; the towers load in plain transformers classes; the export
is atomic and refuses what Hugging Face CLIP cannot hold."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sketchseg_jax.convert import teacher_export  # noqa: E402
from sketchseg_jax.convert.files import read_tensors  # noqa: E402
from sketchseg_jax.errors import UserError  # noqa: E402
from sketchseg_jax.models.sbir import SBIRTeacher  # noqa: E402
from sketchseg_jax.models.vit_config import ViTConfig  # noqa: E402

TOL = 1e-4
SIZE = 32

CASES = {
    # name: (teacher kwargs, projection_dim, mlp, extra photo sizes (H, W))
    "shared_shallow_cls": (dict(num_prompts=3, deep_prompts=False, separate_towers=False,
                                pool="cls"), 16, "quick_gelu", [(40, 24)]),
    "separate_deep_mean": (dict(num_prompts=2, deep_prompts=True, separate_towers=True,
                                pool="mean"), 24, "gelu", []),
    "no_prompts_cls": (dict(num_prompts=0, separate_towers=False, pool="cls"), 16, "gelu", []),
    "no_projection_shallow_mean": (dict(num_prompts=2, separate_towers=False, pool="mean"),
                                   None, "quick_gelu", []),
}


def _vit(projection_dim, mlp, pool, family="clip"):
  return ViTConfig(family=family, width=32, depth=2, num_heads=2, mlp_dim=48, patch_size=8,
                   image_size=SIZE, mlp=mlp, projection_dim=projection_dim,
                   dense_projection=pool == "mean")


def _build(name, seed=0):
  kwargs, proj, mlp, _ = CASES[name]
  model = SBIRTeacher(_vit(proj, mlp, kwargs["pool"]), **kwargs)
  params = nn.unbox(model.init(jax.random.key(seed), np.zeros((1, SIZE, SIZE, 3), np.uint8),
                               np.zeros((1, SIZE, SIZE), np.uint8))["params"])
  # Flax initialises LayerNorms to (1, 0) and prompts small; perturbing every weight makes a
  # wrong mapping (or a skipped norm) visible in the embeddings.
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.2, p.shape).astype(np.float32),
                        params)
  return model, params


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
  model, params = _build(request.param)
  out = teacher_export.export_teacher(model, params, tmp_path_factory.mktemp(request.param) / "t")
  return request.param, model, params, out


def _inputs(h, w, seed):
  rng = np.random.default_rng(seed)
  photos = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
  # Sparse strokes, like a real raster, plus a few grey levels.
  ink = (rng.random((3, h, w)) < 0.15) * rng.integers(100, 256, (3, h, w))
  return photos, ink.astype(np.uint8)


def test_pytorch_reference_matches_flax_embeddings(exported):
  name, model, params, out = exported
  ref = teacher_export.load_exported_teacher(out)
  sizes = [(SIZE, SIZE)] + CASES[name][3]
  for i, (h, w) in enumerate(sizes):
    photos, ink = _inputs(h, w, i)
    want_p = np.asarray(model.apply({"params": params}, photos, method=SBIRTeacher.photo))
    got_p = ref.photo(photos)
    assert got_p.shape == want_p.shape
    np.testing.assert_allclose(got_p, want_p, atol=TOL, rtol=0, err_msg=f"{name} photo {h}x{w}")
    np.testing.assert_allclose(np.linalg.norm(got_p, axis=-1), 1.0, atol=1e-5)
    if (h, w) == (SIZE, SIZE):
      want_s = np.asarray(model.apply({"params": params}, ink, method=SBIRTeacher.sketch))
      np.testing.assert_allclose(ref.sketch(ink), want_s, atol=TOL, rtol=0,
                                 err_msg=f"{name} sketch")
      # the two modalities really differ (own prompts or own tower), so a swap would show
      if model.num_prompts or model.separate_towers:
        assert not np.allclose(ref.sketch(ink), ref.photo(np.repeat(255 - ink[..., None], 3, -1)),
                               atol=1e-3)


def test_towers_load_in_plain_transformers_classes(exported):
  name, model, params, out = exported
  cls = (transformers.CLIPVisionModelWithProjection if model.vit.projection_dim
         else transformers.CLIPVisionModel)
  for tower in ("photo_tower", "sketch_tower"):
    hf, info = cls.from_pretrained(out / tower, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], (name, tower, info)
    assert not info["mismatched_keys"], info
  photo_w, sketch_w = read_tensors(out / "photo_tower"), read_tensors(out / "sketch_tower")
  same = all(np.array_equal(photo_w[k], sketch_w[k]) for k in photo_w)
  assert same == (not model.separate_towers)
  if not model.num_prompts and model.pool == "cls":
    # No prompts: the teacher is the plain HF forward, L2-normalised.
    hf = cls.from_pretrained(out / "photo_tower").eval()
    photos, _ = _inputs(SIZE, SIZE, 5)
    conf = json.loads((out / "teacher.json").read_text())
    x = torch.from_numpy(teacher_export._normalise(photos, conf))
    with torch.no_grad():
      o = hf(pixel_values=x)
    e = (o.image_embeds if hasattr(o, "image_embeds") else o.pooler_output).numpy()
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    want = np.asarray(model.apply({"params": params}, photos, method=SBIRTeacher.photo))
    np.testing.assert_allclose(e, want, atol=TOL, rtol=0)


def test_teacher_json_and_prompt_file_describe_the_forward(exported):
  name, model, params, out = exported
  conf = json.loads((out / "teacher.json").read_text())
  assert conf["format"] == teacher_export.FORMAT_TAG
  for key in ("num_prompts", "deep_prompts", "separate_towers", "pool"):
    assert conf[key] == getattr(model, key), key
  assert conf["family"] == "clip" and conf["image_size"] == SIZE
  assert conf["embed_dim"] == (model.vit.projection_dim or model.vit.width)
  assert conf["towers"]["shared"] == (not model.separate_towers)
  assert "255 - ink" in conf["input"]["sketch"]
  assert len(conf["input"]["normalisation"]["mean"]) == 3
  assert "after the CLS token" in conf["prompts"]["insertion"]
  tensors = read_tensors(out / "prompts.safetensors")
  meta = teacher_export.prompts_metadata(out)
  assert meta["num_prompts"] == str(model.num_prompts)
  if model.num_prompts:
    assert set(tensors) == {"photo_prompts", "sketch_prompts"}
    np.testing.assert_array_equal(tensors["photo_prompts"], params["photo_prompts"])
    np.testing.assert_array_equal(tensors["sketch_prompts"], params["sketch_prompts"])
  else:
    assert tensors == {}


def test_deep_prompts_are_replaced_per_layer_in_the_reference(exported):
  name, model, params, out = exported
  if not model.deep_prompts:
    pytest.skip("shallow or no prompts")
  ref = teacher_export.load_exported_teacher(out)
  photos, _ = _inputs(SIZE, SIZE, 7)
  x = torch.from_numpy(teacher_export._normalise(photos, ref.config))
  with torch.no_grad():
    deep = teacher_export.torch_tower_embed(ref.photo_model, x, ref.photo_prompts, True, "mean")
    shallow = teacher_export.torch_tower_embed(ref.photo_model, x, ref.photo_prompts[0], False,
                                               "mean")
  assert not np.allclose(deep.numpy(), shallow.numpy(), atol=1e-3)
  with pytest.raises(UserError, match="do not fit this tower"):
    teacher_export.torch_tower_embed(ref.photo_model, x, ref.photo_prompts[:1], True, "mean")


def test_export_is_atomic(tmp_path, monkeypatch):
  model, params = _build("shared_shallow_cls")
  out = tmp_path / "teacher"
  out.mkdir()
  (out / "marker").write_text("old export")

  def fail(*args, **kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(teacher_export, "write_safetensors", fail)
  with pytest.raises(RuntimeError, match="disk full"):
    teacher_export.export_teacher(model, params, out)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
  assert sorted(p.name for p in out.iterdir()) == ["marker"]
  monkeypatch.undo()
  teacher_export.export_teacher(model, params, out)
  assert sorted(p.name for p in out.iterdir()) == ["photo_tower", "prompts.safetensors",
                                                   "sketch_tower", "teacher.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_export_refuses_non_clip_and_mismatched_params(tmp_path):
  dino = SBIRTeacher(ViTConfig(family="dinov2", width=32, depth=1, num_heads=2, mlp_dim=48,
                               patch_size=8, image_size=SIZE, mlp="gelu"), num_prompts=1)
  params = nn.unbox(dino.init(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.uint8),
                              np.zeros((1, SIZE, SIZE), np.uint8))["params"])
  with pytest.raises(UserError, match="only CLIP-family"):
    teacher_export.export_teacher(dino, params, tmp_path / "dino")
  model, params = _build("shared_shallow_cls")
  separate = SBIRTeacher(model.vit, num_prompts=3, separate_towers=True)
  with pytest.raises(UserError, match="sketch_backbone"):
    teacher_export.export_teacher(separate, params, tmp_path / "sep")
  deep = SBIRTeacher(model.vit, num_prompts=3, deep_prompts=True)
  with pytest.raises(UserError, match="photo_prompts has shape"):
    teacher_export.export_teacher(deep, params, tmp_path / "deep")
  assert list(tmp_path.iterdir()) == []
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "teacher.json").write_text('{"format": "something else"}')
  with pytest.raises(UserError, match="not an SBIR teacher export"):
    teacher_export.load_exported_teacher(tmp_path / "other")


# ---------------------------------------------------------------- distilled photo towers

def _student(projection_dim, num_prompts, embed_dim, seed=1):
  from sketchseg_jax.stages.distill import PhotoStudent
  vit = ViTConfig(family="clip", width=20, depth=1, num_heads=2, mlp_dim=40, patch_size=16,
                  image_size=SIZE, mlp="gelu", projection_dim=projection_dim)
  student = PhotoStudent(vit, embed_dim, "cls", num_prompts)
  params = nn.unbox(student.init(jax.random.key(seed), np.zeros((1, SIZE, SIZE, 3), np.uint8))
                    ["params"])
  rng = np.random.default_rng(seed)
  return student, jax.tree.map(
      lambda p: np.asarray(p) + rng.normal(0, 0.2, p.shape).astype(np.float32), params)


@pytest.mark.parametrize("projection_dim,num_prompts", [(None, 2), (12, 0), (16, 1)],
                         ids=["head_on_cls", "head_after_projection", "no_head"])
def test_distilled_export_pairs_the_student_photo_tower_with_the_teacher_sketch_tower(
    tmp_path, projection_dim, num_prompts):
  teacher, t_params = _build("separate_deep_mean")  # deep prompts, mean pool, 24-d space
  if projection_dim == 16:  # a 16-d teacher space for the student without a head
    teacher, t_params = _build("shared_shallow_cls")
  embed = teacher.vit.projection_dim
  student, s_params = _student(projection_dim, num_prompts, embed)
  assert ("head" in s_params) == ((projection_dim or 20) != embed)
  out = teacher_export.export_distilled(teacher, t_params, student, s_params, tmp_path / "d")
  conf = json.loads((out / "teacher.json").read_text())
  assert conf["version"] == 2 and conf["towers"]["photo"]["model"]["width"] == 20
  assert conf["towers"]["photo"]["model"]["projection_dim"] == embed
  ref = teacher_export.load_exported_teacher(out)
  assert ref.settings["photo"]["pool"] == "cls" and ref.settings["sketch"]["pool"] == teacher.pool
  for i, (h, w) in enumerate([(SIZE, SIZE), (48, 32)]):
    photos, ink = _inputs(h, w, i)
    want = np.asarray(student.apply({"params": s_params}, photos))
    np.testing.assert_allclose(ref.photo(photos), want, atol=TOL, rtol=0, err_msg=f"{h}x{w}")
  photos, ink = _inputs(SIZE, SIZE, 3)
  want_s = np.asarray(teacher.apply({"params": t_params}, ink, method=SBIRTeacher.sketch))
  np.testing.assert_allclose(ref.sketch(ink), want_s, atol=TOL, rtol=0)
  hf, info = transformers.CLIPVisionModelWithProjection.from_pretrained(
      out / "photo_tower", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert set(read_tensors(out / "prompts.safetensors")) == (
      {"sketch_prompts"} | ({"photo_prompts"} if num_prompts else set()))


def test_distilled_export_refuses_what_it_cannot_hold(tmp_path):
  from sketchseg_jax.stages.distill import PhotoStudent
  teacher, t_params = _build("shared_shallow_cls")
  student, s_params = _student(None, 0, 16)
  mean = PhotoStudent(student.vit, 16, "mean", 0)
  with pytest.raises(UserError, match="pooled by their CLS"):
    teacher_export.export_distilled(teacher, t_params, mean, s_params, tmp_path / "a")
  wide = PhotoStudent(student.vit, 24, "cls", 0)
  with pytest.raises(UserError, match="embeds into 24 dimensions, the teacher into 16"):
    teacher_export.export_distilled(teacher, t_params, wide, s_params, tmp_path / "b")
  prompted = PhotoStudent(student.vit, 16, "cls", 3)
  with pytest.raises(UserError, match="student params do not fit"):
    teacher_export.export_distilled(teacher, t_params, prompted, s_params, tmp_path / "c")
  assert list(tmp_path.iterdir()) == []
