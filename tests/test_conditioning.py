"""VAE latent conventions and the CLIP-image prompt (hd: 2 tokens, dc: 4 tokens)."""

import pytest
import torch
from PIL import Image

from ootd_lib.conditioning import (decode_latents, encode_latents, encode_prompt, encode_repaint_target,
                                   garment_image_embeds, prompt_from_image_embeds)
from ootd_lib.errors import InputError
from ootd_lib.models import build_toy_components


@pytest.fixture(scope="module")
def toy():
    return build_toy_components(0)


def images(b=2, seed=0):
    return torch.rand(b, 3, 128, 96, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind", ["toy AutoencoderTiny", "SD-like AutoencoderKL"])
def test_latents_are_the_unscaled_mode_and_repaint_target_is_scaled(toy, kind):
    from minimodels import mini_kl_vae

    vae, x = (toy["vae"] if kind.startswith("toy") else mini_kl_vae()), images()
    with torch.no_grad():
        lat = encode_latents(vae, x)
        out = vae.encode(x)
        # SD's VAE: the mode (= mean) of its Gaussian, never a sample; the toy VAE: its deterministic latents
        raw = out.latent_dist.mode() if kind.endswith("KL") else out.latents
        target = encode_repaint_target(vae, x)
        again = encode_latents(vae, x)
    assert lat.shape == (2, vae.config.latent_channels, 16, 12)  # f = 8
    assert torch.equal(lat, raw) and torch.equal(lat, again)  # deterministic
    torch.testing.assert_close(target, lat * vae.config.scaling_factor)
    with torch.no_grad():  # decode divides by the factor: decode(scaled) == vae.decode(unscaled)
        dec = decode_latents(vae, target)
        torch.testing.assert_close(dec, vae.decode(lat).sample.clamp(-1, 1), rtol=1e-5, atol=1e-5)
    assert dec.shape == x.shape and dec.min() >= -1 and dec.max() <= 1


def test_toy_tokenizer_is_structured_like_clip(toy):
    tok = toy["tokenizer"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert tok("", max_length=2, padding="max_length", truncation=True).input_ids == [bos, eos]
    for word in ("upperbody", "lowerbody", "dress"):
        ids = tok(word, max_length=3, padding="max_length", truncation=True).input_ids
        assert ids[0] == bos and ids[2] == eos and ids[1] not in (bos, eos)
    assert tok("dress", max_length=5, padding="max_length").input_ids[2:] == [eos] * 3  # padded with EOS
    assert toy["text_encoder"].config.vocab_size == len(tok)


def test_hd_prompt_is_bos_then_image_embedding(toy):
    x = images(2)
    with torch.no_grad():
        prompt = encode_prompt(x, "upper_body", "hd", toy["tokenizer"], toy["text_encoder"], toy["image_encoder"],
                               toy["feature_extractor"])
        embeds = garment_image_embeds(x, toy["image_encoder"], toy["feature_extractor"])
        text = toy["text_encoder"](toy["tokenizer"]([""], max_length=2, padding="max_length",
                                                    return_tensors="pt").input_ids)[0]
    assert prompt.shape == (2, 2, 64)
    torch.testing.assert_close(prompt[:, 1], embeds)  # token 1 replaced by the image embedding
    torch.testing.assert_close(prompt[:, 0], text[:, 0].expand(2, -1))  # token 0: the encoded BOS
    assert not torch.allclose(prompt[0, 1], prompt[1, 1])  # two different garments


def test_dc_prompt_is_three_text_tokens_plus_image(toy):
    x = images(3, seed=1)
    args = (toy["tokenizer"], toy["text_encoder"], toy["image_encoder"], toy["feature_extractor"])
    with torch.no_grad():
        prompt = encode_prompt(x, ["upper_body", "lower_body", "dresses"], "dc", *args)
        embeds = garment_image_embeds(x, toy["image_encoder"], toy["feature_extractor"])
        same = prompt_from_image_embeds(embeds, ["upperbody", "lowerbody", "dress"], "dc", toy["tokenizer"],
                                        toy["text_encoder"])
        single = encode_prompt(x[:1], "upper_body", "dc", *args)
    assert prompt.shape == (3, 4, 64)
    torch.testing.assert_close(prompt[:, 3], embeds)
    torch.testing.assert_close(prompt, same)
    torch.testing.assert_close(single, prompt[:1])
    assert not torch.allclose(prompt[0, 1], prompt[1, 1])  # the category word differs
    with pytest.raises(InputError, match="category"):
        encode_prompt(x[:1], "hats", "dc", *args)
    with pytest.raises(InputError, match="2 categories for 3"):
        encode_prompt(x, ["upper_body", "dresses"], "dc", *args)
    with pytest.raises(InputError, match="model_type"):
        encode_prompt(x[:1], "upper_body", "xl", *args)


def test_pil_and_tensor_garments_give_the_same_embedding(toy):
    x = images(1, seed=2)
    arr = ((x[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    with torch.no_grad():
        a = garment_image_embeds(x, toy["image_encoder"], toy["feature_extractor"])
        b = garment_image_embeds(Image.fromarray(arr), toy["image_encoder"], toy["feature_extractor"])
    torch.testing.assert_close(a, b)
