"""aMUSEd policy: loading the diffusers layout, the pipeline's conditioning, logits, pixels, mask counts,
maskrl's sampler and learner, training and gradient checkpointing, and AmusedPipeline itself as the
oracle of a whole sampling run, on a tiny aMUSEd faked in the official layout."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel
from transformers import CLIPTextModelWithProjection

from maskrl.grpo import score_pairs
from maskrl.iteration import rollout_groups
from maskrl.models.amused import AmusedPolicy, load_amused, pipeline_noise_scale, write_amused_reference
from maskrl.models.lora import LoraConfig, for_training, trainable_state
from maskrl.models.policy import Guidance, MaskedPolicy
from maskrl.models.random_amused import TEXT_LEN, random_amused
from maskrl.models.store import image_decoder, load_policy, save_policy
from maskrl.sampling import SamplingConfig, sample
from maskrl.schedule import MaskRounding, masked_counts
from tests.fake_amused import CODES, GRID, MASK_ID, PIXELS, fake_amused

N = GRID * GRID


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops: a second intra-op thread only adds synchronisation, which costs whole milliseconds
    per op on a busy machine (the sampler ran 15 to 100 times slower on 2 threads than on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return fake_amused(tmp_path_factory.mktemp("amused-256"))


@pytest.fixture(scope="module")
def policy(release) -> AmusedPolicy:
    return load_amused(release)


def _state(seed: int, batch: int = 2, masked: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, CODES, (batch, N), generator=g)
    return torch.where(torch.rand(batch, N, generator=g) < masked, CODES, codes)


def _pipeline(policy: AmusedPolicy) -> AmusedPipeline:
    pipe = AmusedPipeline(vqvae=policy.vqvae, tokenizer=policy.tokenizer, text_encoder=policy.text_encoder,
                          transformer=policy.transformer, scheduler=policy.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_policy_interface_and_attributes(policy):
    assert isinstance(policy, MaskedPolicy) and not policy.training
    assert (policy.mask_code, policy.mask_token_id, policy.num_image_tokens, policy.grid_shape) == (CODES, MASK_ID, N, (GRID, GRID))
    assert policy.preset.guidance == Guidance.diffusers and policy.preset.mask_rounding == MaskRounding.float32
    assert policy.micro_conditioning == (PIXELS, PIXELS, 0, 0, 6) == (_pipeline(policy).vae_scale_factor * GRID,) * 2 + (0, 0, 6)
    assert all(k.startswith("transformer.") for k in policy.state_dict())  # text encoder and VQ: no parameters
    assert policy.num_parameters == sum(p.numel() for p in policy.transformer.parameters())
    assert not any(p.requires_grad for m in (policy.text_encoder, policy.vqvae) for p in m.parameters())


def test_prompts_are_the_pipelines_ids_and_never_truncated(policy):
    texts = ["A photo of a corgi, wearing sunglasses.", ""]
    ids = policy.encode_prompts(texts)
    expected = policy.tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True,
                                max_length=policy.tokenizer.model_max_length).input_ids  # AmusedPipeline's call
    assert ids.dtype == torch.long and ids.shape == (2, TEXT_LEN) and torch.equal(ids, expected)
    assert torch.equal(policy.null_prompts(3), expected[1].expand(3, -1))
    assert policy.attention_mask(ids) is None
    assert policy.encode_prompts(["x" * 75]).shape == (1, TEXT_LEN)  # the exact budget fits
    with pytest.raises(ValueError, match=r"prompt 'xxx.*' has 76 tokens; CLIP's text budget is 75"):
        policy.encode_prompts(["ok", "x" * 76])


def _pipeline_logits(policy: AmusedPolicy, text_ids: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """UVit2DModel's output with the conditioning AmusedPipeline builds, in its (B, K, H, W) layout."""
    out = policy.text_encoder(text_ids, return_dict=True, output_hidden_states=True)
    micro = torch.tensor([PIXELS, PIXELS, 0, 0, 6], dtype=out.hidden_states[-2].dtype)[None].expand(len(text_ids), -1)
    latents = torch.where(state == CODES, MASK_ID, state).reshape(-1, GRID, GRID)
    return policy.transformer(latents, micro_conds=micro, pooled_text_emb=out.text_embeds,
                              encoder_hidden_states=out.hidden_states[-2])


@pytest.mark.parametrize("downsample", [False, True], ids=["amused-256-like", "amused-512-like"])
def test_forward_is_the_transformers_output_with_the_pipelines_conditioning(release, tmp_path, downsample):
    policy = load_amused(fake_amused(tmp_path, downsample=True)) if downsample else load_amused(release)
    text, state = policy.encode_prompts(["a red cat", ""]), _state(2)
    with torch.no_grad():
        logits = policy(text, state)
        expected = _pipeline_logits(policy, text, state)
    assert logits.shape == (2, N, CODES) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected.flatten(2).transpose(1, 2), rtol=0, atol=0)
    with torch.no_grad():  # the text conditions the image (the cached text states follow the ids)
        other_text = policy(policy.encode_prompts(["a blue dog", ""]), state)
    assert not torch.allclose(other_text[0], logits[0]) and torch.equal(other_text[1], logits[1])


def test_half_precision(release, policy, tmp_path):
    """bfloat16 everywhere; float16 keeps the VQ in float32 when its config asks for the pipeline's upcast."""
    half = load_amused(release, dtype=torch.bfloat16)
    assert {half.transformer.dtype, half.text_encoder.dtype, half.vqvae.dtype} == {torch.bfloat16}
    text, state = half.encode_prompts(["a red cat", ""]), _state(5)
    with torch.no_grad():
        logits = half(text, state)
        torch.testing.assert_close(logits.float(), policy(text, state), rtol=0, atol=0.25)  # logits span +-6
    assert logits.dtype == torch.bfloat16
    upcast = shutil.copytree(release, tmp_path / "upcast")
    config = json.loads((upcast / "vqvae" / "config.json").read_text())
    (upcast / "vqvae" / "config.json").write_text(json.dumps({**config, "force_upcast": True}))
    assert load_amused(upcast, dtype=torch.float16).vqvae.dtype == torch.float32
    assert load_amused(release, dtype=torch.float16).vqvae.dtype == torch.float16


def test_decode_images_is_the_pipelines_decoding(policy):
    codes = torch.randint(0, CODES, (2, N), generator=torch.Generator().manual_seed(1))
    images = policy.decode_images(codes)
    assert images.shape == (2, PIXELS, PIXELS, 3) and images.dtype == np.uint8
    pipe = _pipeline(policy)
    with torch.no_grad():  # AmusedPipeline.__call__'s decoding, then its image processor's PIL output
        pixels = policy.vqvae.decode(codes.reshape(2, GRID, GRID), force_not_quantize=True,
                                     shape=(2, GRID, GRID, policy.vqvae.config.latent_channels)).sample.clip(0, 1)
    expected = np.stack([np.asarray(im) for im in pipe.image_processor.postprocess(pixels, "pil")])
    np.testing.assert_array_equal(images, expected)
    with pytest.raises(ValueError, match=f"codes outside 0..{CODES - 1}"):
        policy.decode_images(torch.full((1, N), CODES))


def test_missing_parts_are_named(release, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aMUSEd \(model.model_dir\) directory .*nowhere.* does not exist .*model_index.json"):
        load_amused(tmp_path / "nowhere")
    for sub, file in (("transformer", "diffusion_pytorch_model.safetensors"), ("vqvae", "config.json"),
                      ("text_encoder", "model.safetensors"), ("tokenizer", "merges.txt"),
                      ("scheduler", "scheduler_config.json")):
        broken = shutil.copytree(release, tmp_path / sub)
        (broken / sub / file).unlink()
        with pytest.raises(FileNotFoundError, match=f"aMUSEd {sub} directory .* has no {file}"):
            load_amused(broken)
    shutil.rmtree(tmp_path / "tokenizer" / "tokenizer")
    with pytest.raises(FileNotFoundError, match="aMUSEd tokenizer directory .* does not exist"):
        load_amused(tmp_path / "tokenizer")


def test_mask_counts_are_the_schedulers(policy):
    """AmusedScheduler.step itself, on random logits: how many tokens stay masked after each step."""
    for steps in range(1, N + 1):
        scheduler = AmusedScheduler(mask_token_id=MASK_ID)
        scheduler.set_timesteps(steps)
        latents, counts, g = torch.full((1, GRID, GRID), MASK_ID), [], torch.Generator().manual_seed(steps)
        for t in scheduler.timesteps:
            latents = scheduler.step(torch.randn(1, CODES, GRID, GRID, generator=g), t, latents, generator=g).prev_sample
            counts.append(int((latents == MASK_ID).sum()))
        assert counts == masked_counts(N, steps, policy.preset.mask_rounding), steps


@pytest.mark.parametrize("variant", ["candidate1", "candidate2"])
def test_maskrl_samples_and_scores_amused_with_its_preset(policy, variant):
    """The generic sampler and learner on aMUSEd: the learner's recomputed transition log-probs equal
    the recorded ones; the preset's rounding sets each step's reveal count; images decode."""
    sampling = SamplingConfig(steps=4, cfg_scale=2.0, variant=variant, noise_scale=pipeline_noise_scale(4))
    prompts = [(0, "A photo of a corgi, wearing sunglasses."), (1, "two cats")]
    batch = rollout_groups(policy, prompts, 2, sampling, torch.Generator().manual_seed(0), 0)
    assert batch.tokens.shape == (4, N) and 0 <= int(batch.tokens.min()) and int(batch.tokens.max()) < CODES
    left = masked_counts(N, 4, MaskRounding.float32)
    revealed = torch.stack([(batch.reveal_step == t).sum(1) for t in range(4)], 1)
    assert revealed.tolist() == [[N - left[0], left[0] - left[1], left[1] - left[2], left[2]]] * 4
    traj, step = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)
    with torch.no_grad():
        recomputed, _ = score_pairs(policy, batch, traj, step, sampling)
    torch.testing.assert_close(recomputed, batch.behaviour(traj, step), atol=1e-5, rtol=0)
    assert policy.decode_images(batch.tokens).shape == (4, PIXELS, PIXELS, 3)


# (12, 10.0): the pipeline's defaults; at s <= 1 the pipeline does not guide
@pytest.mark.parametrize("steps, scale", [(3, 2.0), (12, 10.0), (16, 4.0), (4, 1.0), (4, 0.5)])
def test_maskrl_sampler_reproduces_amused_pipeline(policy, steps, scale):
    """AmusedPipeline as the oracle: with the preset and the scheduler's noise, maskrl's sampler makes
    the same random draws in the same order (per step a multinomial over every token, then one uniform
    per token for the Gumbel noise) and so the same tokens and images from the same seed. (The
    probabilities differ in the last bits, softmax vs exp(log_softmax): a draw that lands within
    that of a boundary could differ; none does here.)"""
    prompts = ["a red cat", "two blue squares", "x", "a photo of a corgi"]
    sampling = SamplingConfig(steps=steps, cfg_scale=scale, noise_scale=pipeline_noise_scale(steps))
    pipe = _pipeline(policy)
    for seed in range(3):
        rollout = sample(policy, prompts, sampling, torch.Generator().manual_seed(seed))
        latents = []
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=scale, output_type="pil",
                      generator=torch.Generator().manual_seed(seed), callback=lambda i, t, x: latents.append(x)).images
        assert len(latents) == steps and torch.equal(rollout.tokens, latents[-1].reshape(len(prompts), N))
        np.testing.assert_array_equal(policy.decode_images(rollout.tokens), np.stack([np.asarray(im) for im in images]))
    off = sample(policy, prompts, SamplingConfig(steps=steps, cfg_scale=scale, noise_scale=0.0), torch.Generator().manual_seed(2))
    assert not torch.equal(off.tokens, rollout.tokens)  # the noise schedule matters: the match is not trivial


KEY_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "amused_release_keys.txt"
TRANSFORMER_PARAMS = {16: 603_537_664, 32: 608_257_792}  # aMUSEd's ~603 M-parameter transformer; 512 adds the resampling
VQ_PARAMS = 146_244_675


def _release_keys(side: int) -> dict[str, tuple[int, ...]]:
    rows = [line.split() for line in KEY_FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    return {name: tuple(int(d) for d in shape.split(",")) for name, shape, releases in rows
            if str(side * 16) in releases.split(",")}


@pytest.mark.parametrize("side", [16, 32], ids=["amused-256", "amused-512"])
def test_release_sizes(side):
    """The released architectures on the meta device (no weights; `maskrl.models.random_amused`):
    UVit2DModel's defaults with the release's sample_size and down/up-sampling, its VQ, CLIP-L; every
    transformer/ and vqvae/ weight name and shape is the release's (the committed fixture)."""
    policy = random_amused(side, device="meta")
    actual = {f"{part}/{name}": tuple(t.shape) for part in ("transformer", "vqvae")
              for name, t in getattr(policy, part).state_dict().items()}
    assert actual == _release_keys(side)
    assert sum(p.numel() for p in policy.transformer.parameters()) == TRANSFORMER_PARAMS[side]
    assert sum(p.numel() for p in policy.vqvae.parameters()) == VQ_PARAMS
    assert (policy.num_image_tokens, policy.grid_shape, policy.mask_code, policy.mask_token_id) == (side * side, (side, side), 8192, 8255)
    assert policy.micro_conditioning == (side * 16, side * 16, 0, 0, 6)
    logits = policy(policy.encode_prompts(["a cat", ""]), torch.full((2, side * side), 8192))
    assert logits.shape == (2, side * side, 8192)


def _grads(policy: AmusedPolicy, text: torch.Tensor, state: torch.Tensor) -> dict[str, torch.Tensor]:
    policy.zero_grad(set_to_none=True)
    logp = torch.log_softmax(policy(text, state), -1)
    (logp[..., 0] * torch.linspace(-1, 1, N)).sum().backward()
    return {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}


def test_a_gradient_step_changes_the_transformer_only(release):
    policy = load_amused(release).train()
    frozen = {name: {k: v.clone() for k, v in part.state_dict().items()}
              for name, part in (("text_encoder", policy.text_encoder), ("vqvae", policy.vqvae))}
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    optim = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    grads = _grads(policy, policy.encode_prompts(["a red cat", "two cats"]), _state(3))
    assert grads.keys() == dict(policy.transformer.named_parameters(prefix="transformer")).keys()
    optim.step()
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    for name, part in (("text_encoder", policy.text_encoder), ("vqvae", policy.vqvae)):
        assert all(torch.equal(frozen[name][k], v) for k, v in part.state_dict().items()), name


def test_checkpointed_gradients_equal_plain_ones(release):
    policy = load_amused(release).train()
    text, state = policy.encode_prompts(["a red cat", "two cats"]), _state(4)
    policy.transformer.enable_gradient_checkpointing()  # diffusers' own switch: broken in 0.42
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        policy(text, state)
    policy.transformer.disable_gradient_checkpointing()
    plain = _grads(policy, text, state)
    keys = list(policy.state_dict())
    policy.enable_gradient_checkpointing()
    policy.enable_gradient_checkpointing()  # idempotent
    assert list(policy.state_dict()) == keys
    checkpointed = _grads(policy, text, state)
    assert checkpointed.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # no recomputation outside autograd; same logits
        torch.testing.assert_close(policy(text, state), load_amused(release)(text, state), rtol=0, atol=0)


def test_reward_workers_load_the_vq_alone(release, policy, tmp_path, monkeypatch):
    """A reward worker decodes through the release's VQ without building the transformer or CLIP."""
    ref = write_amused_reference(release, "float32", tmp_path / "ref")

    def refuse(*args, **kwargs):
        raise AssertionError("the reward worker's decoder loaded a model part it does not need")

    for part in (UVit2DModel, CLIPTextModelWithProjection):
        monkeypatch.setattr(part, "from_pretrained", refuse)
    tokens = torch.randint(0, CODES, (2, GRID * GRID), generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(image_decoder(ref)(tokens), policy.decode_images(tokens))


def test_release_reference_lora_and_full_fine_tuning_checkpoints(release, policy, tmp_path):
    """aMUSEd as a maskrl checkpoint: a reference to the release directory (nothing converted); LoRA
    checkpoints hold only the transformer's adapters, full fine-tuning ones the transformer in
    diffusers' layout; reward workers decode through the reference."""
    ref = write_amused_reference(release, "float32", tmp_path / "ref")
    loaded = load_policy(ref)
    text = loaded.encode_prompts(["a corgi", "two cats"])
    state = torch.randint(0, CODES + 1, (2, GRID * GRID), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(text, state), policy(text, state))
    tokens = torch.randint(0, CODES, (2, GRID * GRID), generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(image_decoder(ref)(tokens), policy.decode_images(tokens))

    adapted = for_training(load_policy(ref), LoraConfig(rank=2), ref)
    assert adapted.lora.target_modules == sorted(AmusedPolicy.lora_targets)  # the family's attention and MLP layers
    with torch.no_grad():
        for v in trainable_state(adapted).values():
            v.normal_(0, 0.1)
        expected = adapted(text, state)
    out = save_policy(adapted, tmp_path / "lora")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "config.json"]
    with torch.no_grad():
        torch.testing.assert_close(load_policy(out)(text, state), expected)

    full = load_policy(ref)
    with torch.no_grad():
        next(full.transformer.parameters()).add_(0.5)
        expected = full(text, state)
    saved = save_policy(full, tmp_path / "full")
    assert (saved / "transformer" / "config.json").is_file()
    with torch.no_grad():
        torch.testing.assert_close(load_policy(saved)(text, state), expected)
