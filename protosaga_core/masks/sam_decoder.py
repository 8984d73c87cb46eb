"""SAM's mask decoder for many point prompts on one image, with the image-token work shared or factored.

The automatic mask generator decodes hundreds of point prompts against one image. Upstream's
`MaskDecoder` copies the image embedding once per prompt and runs every projection of the two-way
transformer over all h*w image tokens of every copy. Here the same function is computed with the algebra
rearranged (same parameters, same result up to float rounding; tests/test_sam_decoder.py compares it with
upstream on a real photo):

- in the first block the image tokens are still the same for every prompt, so their key, value and query
  projections are computed once;
- after that the image tokens differ per prompt, but every attention between them and a prompt's t tokens
  has rank H*t (H heads): a projection of the image tokens followed by a product with t projected tokens
  is one product with H*t precomputed vectors, and a softmax-weighted sum of projected image tokens is a
  projection of the weighted sum. That replaces four [N, C] x [C, C/2] projections per block and prompt
  by [N, C] x [C, H*t] products (H*t = 56 < C/2 = 128 for point prompts) and drops the per-head copies;
- a key bias adds the same amount to every score a query takes a softmax over, so it is dropped;
- the bilinear upsampling to the encoder's square input, the crop to the image and the resize to the
  original size are all linear along each axis: one [H_out, h] and one [W_out, w] matrix apply them to
  the low-resolution logits without the [1024, 1024] intermediate, and only the tokens whose upscaled
  pixels those matrices read (the image's part of the padded square) are upscaled;
- only the mask tokens the caller asked for are turned into masks.

Shapes: B prompts, t tokens per prompt, N = h * w image tokens, C channels, H heads, d = internal / H.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from segment_anything import SamPredictor
    from segment_anything.modeling.mask_decoder import MaskDecoder
    from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """[..., n, H * d] -> [..., H, n, d]"""
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """[..., H, n, d] -> [..., n, H * d]"""
    return x.transpose(-3, -2).flatten(-2)


def _weight_per_head(linear: torch.nn.Linear, num_heads: int) -> Tensor:
    """A projection's weight split by output head. [H, d, C_in]"""
    return linear.weight.unflatten(0, (num_heads, -1))


def tokens_to_image(attn: Attention, tokens: Tensor, image_keys: Tensor, image_values: Tensor) -> Tensor:
    """Prompt tokens attend to the image tokens, without projecting the image tokens.

    score(j, i) = q_j . (W_k x_i + b_k) = (W_k^T q_j) . x_i + const(j), and the constant cancels in the
    softmax over i; sum_i a_ji (W_v x_i + b_v) = W_v (sum_i a_ji x_i) + b_v since the a_ji sum to one.

    Args:
        tokens: queries. [B, t, C]
        image_keys: image tokens plus positional encoding, shared [N, C] or per prompt [B, N, C].
        image_values: image tokens, shaped like image_keys.

    Returns:
        the attention output. [B, t, C]
    """
    heads = attn.num_heads
    q = _heads(attn.q_proj(tokens), heads) / math.sqrt(attn.internal_dim // heads)  # [B, H, t, d]
    b, _, t, _ = q.shape
    if image_keys.dim() == 2:  # one image for all prompts: project it once, all prompts in one product
        k = _heads(attn.k_proj(image_keys), heads)  # [H, N, d]
        v = _heads(attn.v_proj(image_values), heads)
        weights = (q.transpose(0, 1).flatten(1, 2) @ k.transpose(1, 2)).softmax(dim=-1)  # [H, B * t, N]
        values = (weights @ v).unflatten(1, (b, t)).transpose(0, 1)  # [B, H, t, d]
    else:
        key_directions = torch.einsum("bhtd,hdc->bhtc", q, _weight_per_head(attn.k_proj, heads))
        scores = key_directions.flatten(1, 2) @ image_keys.transpose(-1, -2)  # [B, H * t, N]
        pooled = (scores.softmax(dim=-1) @ image_values).unflatten(1, (heads, t))  # [B, H, t, C]
        values = torch.einsum("bhtc,hdc->bhtd", pooled, _weight_per_head(attn.v_proj, heads))
        values = values + attn.v_proj.bias.unflatten(0, (heads, 1, -1))
    return attn.out_proj(_merge_heads(values))


def image_to_tokens(
    attn: Attention, image_queries: Tensor, residual: Tensor, token_keys: Tensor, token_values: Tensor
) -> Tensor:
    """The image tokens attend to each prompt's tokens, without projecting the image tokens; returns the
    residual plus the attention output.

    score(i, j) = (W_q x_i + b_q) . k_j = x_i . (W_q^T k_j) + b_q . k_j. The output projection is folded
    into the t value vectors of each head, and its bias too: a head's weights sum to one, so adding
    b_out / H to each of its value vectors adds b_out.

    Args:
        image_queries: image tokens plus positional encoding, shared [N, C] or per prompt [B, N, C].
        residual: what the output is added to, shaped like image_queries.
        token_keys: prompt tokens plus their positional embedding. [B, t, C]
        token_values: prompt tokens. [B, t, C]

    Returns:
        [B, N, C]
    """
    heads = attn.num_heads
    k = _heads(attn.k_proj(token_keys), heads) / math.sqrt(attn.internal_dim // heads)  # [B, H, t, d]
    b, _, t, _ = k.shape
    if image_queries.dim() == 2:  # one image for all prompts: project it once, all prompts in one product
        q = _heads(attn.q_proj(image_queries), heads)  # [H, N, d]
        scores = (k.transpose(0, 1).flatten(1, 2) @ q.transpose(1, 2)).unflatten(1, (b, t)).transpose(0, 1)
    else:
        query_directions = torch.einsum("bhtd,hdc->bhtc", k, _weight_per_head(attn.q_proj, heads))
        query_offsets = torch.einsum("bhtd,hd->bht", k, attn.q_proj.bias.unflatten(0, (heads, -1)))
        scores = (query_directions.flatten(1, 2) @ image_queries.transpose(-1, -2)).unflatten(1, (heads, t))
        scores = scores + query_offsets.unsqueeze(-1)  # [B, H, t, N]
    weights = scores.softmax(dim=2)

    v = _heads(attn.v_proj(token_values), heads)  # [B, H, t, d]
    out_per_head = attn.out_proj.weight.unflatten(1, (heads, -1)).permute(1, 2, 0)  # [H, d, C]
    outputs = (v @ out_per_head + attn.out_proj.bias / heads).flatten(1, 2)  # [B, H * t, C]
    return torch.baddbmm(residual.expand(len(outputs), -1, -1), weights.flatten(1, 2).transpose(1, 2), outputs)


def _token_side(block: TwoWayAttentionBlock, queries: Tensor, query_pe: Tensor, first: bool) -> Tensor:
    """The block's self-attention of the prompt tokens. [B, t, C]"""
    if first:
        return block.norm1(block.self_attn(q=queries, k=queries, v=queries))
    q = queries + query_pe
    return block.norm1(queries + block.self_attn(q=q, k=q, v=queries))


def _mlp(block: TwoWayAttentionBlock, queries: Tensor) -> Tensor:
    return block.norm3(queries + block.mlp(queries))


def two_way_transformer(decoder: MaskDecoder, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Upstream `TwoWayTransformer.forward` for B prompts on one image.

    Args:
        image: the image embedding with the dense prompt embedding added, same for all prompts. [N, C]
        image_pe: its positional encoding. [N, C]
        tokens: output tokens and sparse prompt embeddings. [B, t, C]

    Returns:
        the processed IoU and mask tokens [B, 1 + masks, C] and image tokens [B, N, C].
    """
    transformer = decoder.transformer
    first, *rest = transformer.layers
    queries = _token_side(first, tokens, tokens, first=True)
    attended = tokens_to_image(first.cross_attn_token_to_image, queries + tokens, image + image_pe, image)
    queries = _mlp(first, first.norm2(queries + attended))
    keys = first.norm4(image_to_tokens(first.cross_attn_image_to_token, image + image_pe, image, queries + tokens, queries))
    for block in rest:
        queries = _token_side(block, queries, tokens, first=False)
        positioned = keys + image_pe
        attended = tokens_to_image(block.cross_attn_token_to_image, queries + tokens, positioned, keys)
        queries = _mlp(block, block.norm2(queries + attended))
        keys = block.norm4(image_to_tokens(block.cross_attn_image_to_token, positioned, keys, queries + tokens, queries))
    # only the IoU and mask tokens are read after the last attention
    outputs = 1 + decoder.num_mask_tokens
    queries, tokens = queries[:, :outputs], tokens[:, :outputs]
    final = tokens_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + image_pe, keys)
    return transformer.norm_final_attn(queries + final), keys


def decode_points(
    decoder: MaskDecoder,
    image_embedding: Tensor,
    image_pe: Tensor,
    no_mask_embedding: Tensor,
    sparse_embeddings: Tensor,
    multimask_output: bool,
    extent: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Upstream `MaskDecoder.forward` for B point prompts on one image and no mask input.

    Args:
        image_embedding: the image encoder's output. [1, C, h, w]
        image_pe: the prompt encoder's dense positional encoding. [1, C, h, w]
        no_mask_embedding: the prompt encoder's `no_mask_embed` weight. [1, C]
        sparse_embeddings: the prompt encoder's sparse embeddings. [B, p, C]
        multimask_output: the three multimask outputs, else the single one.
        extent: upscale only the first (rows, columns) of the h x w tokens, the part the image covers;
            all of them by default.

    Returns:
        low-resolution mask logits [B, M, 4 rows, 4 columns] and predicted IoUs [B, M], M = 3 or 1.
    """
    _, channels, h, w = image_embedding.shape
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.expand(sparse_embeddings.shape[0], -1, -1), sparse_embeddings], dim=1)
    image = image_embedding.flatten(2)[0].T + no_mask_embedding  # [N, C]
    hs, keys = two_way_transformer(decoder, image, image_pe.flatten(2)[0].T, tokens)
    selected = range(1, decoder.num_mask_tokens) if multimask_output else range(1)
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in selected], dim=1)
    rows, columns = extent or (h, w)
    covered = keys.unflatten(1, (h, w))[:, :rows, :columns]
    masks = upscaled_masks(decoder.output_upscaling, covered.flatten(1, 2), hyper, (rows, columns))
    iou = decoder.iou_prediction_head(hs[:, 0])[:, list(selected)]
    return masks, iou


def _transposed_conv_as_linear(conv: torch.nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """A 2x2 stride-2 transposed convolution as one per-pixel linear map to its 2x2 output block.

    Args:
        x: pixels, channels last. [..., C_in]

    Returns:
        each pixel's output block, ordered (row, column). [..., 4, C_out]
    """
    if conv.kernel_size != (2, 2) or conv.stride != (2, 2):
        raise ValueError(f"SAM's mask decoder upscales with 2x2 stride-2 convolutions, got {conv}")
    weight = conv.weight.permute(2, 3, 1, 0).flatten(0, 2)  # [4 * C_out, C_in]
    return F.linear(x, weight, conv.bias.repeat(4)).unflatten(-1, (4, -1))


def upscaled_masks(upscaling: torch.nn.Sequential, keys: Tensor, hyper: Tensor, size: tuple[int, int]) -> Tensor:
    """Upstream's `output_upscaling` then the hypernetwork product, channels last.

    Both transposed convolutions have stride = kernel, so each is a linear map from one pixel to its 2x2
    block; computing them as matrix products keeps the channels last, where the layer norm over them is
    one fused op, and only the M mask channels are rearranged to image order at the end.

    Args:
        upscaling: ConvTranspose2d, LayerNorm2d, GELU, ConvTranspose2d, GELU (upstream's layout).
        keys: the transformer's image tokens, row-major. [B, h * w, C]
        hyper: the hypernetworks' outputs for the M selected mask tokens. [B, M, c]
        size: (h, w).

    Returns:
        mask logits. [B, M, 4h, 4w]
    """
    up1, norm, act1, up2, act2 = upscaling
    first = _transposed_conv_as_linear(up1, keys)  # [B, N, 4, C/4]
    first = act1(F.layer_norm(first, first.shape[-1:], norm.weight, norm.bias, norm.eps))
    second = act2(_transposed_conv_as_linear(up2, first))  # [B, N, 4, 4, C/8]
    logits = second.flatten(1, 3) @ hyper.transpose(1, 2)  # [B, N * 4 * 4, M]; pixel (i, j, a, b, c, d)
    h, w = size
    logits = logits.unflatten(1, (h, w, 2, 2, 2, 2))  # rows 4i + 2a + c, columns 4j + 2b + d
    return logits.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(len(keys), -1, 4 * h, 4 * w)


@lru_cache(maxsize=32)
def _resize_matrix(size_in: int, size_square: int, size_crop: int, size_out: int, device: str) -> Tensor:
    """Upstream's bilinear resize to the square, crop and bilinear resize along one axis. [size_out, size_in]"""
    eye = torch.eye(size_in, device=device)[None, None]  # each column of the identity, resized like a mask
    square = F.interpolate(eye, (size_in, size_square), mode="bilinear", align_corners=False)[..., :size_crop]
    return F.interpolate(square, (size_in, size_out), mode="bilinear", align_corners=False)[0, 0].T.contiguous()


def _tokens_read(resize: Tensor) -> int:
    """How many leading tokens along an axis a resize reads (4 low-resolution pixels per token)."""
    return math.ceil((int(resize.any(dim=0).nonzero().max()) + 1) / 4)


def predict_points(
    predictor: SamPredictor, point_coords: Tensor, point_labels: Tensor, multimask_output: bool, return_logits: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Upstream `SamPredictor.predict_torch` for point prompts only (no boxes, no mask input).

    Args:
        predictor: a predictor with an image set.
        point_coords: prompts in the resized image's coordinates. [B, p, 2]
        point_labels: 1 foreground, 0 background. [B, p]

    Returns:
        masks at the original size [B, M, H, W] (logits, or booleans), predicted IoUs [B, M] and the
        low-resolution logits of the part of the square input the image covers [B, M, <=256, <=256].
    """
    model = predictor.model
    _, _, h, w = predictor.features.shape
    # upstream's bilinear resize to the square input, crop to the image and resize to the original size
    square, device = model.image_encoder.img_size, str(point_coords.device)
    resize_rows = _resize_matrix(4 * h, square, predictor.input_size[0], predictor.original_size[0], device)
    resize_columns = _resize_matrix(4 * w, square, predictor.input_size[1], predictor.original_size[1], device)
    extent = (_tokens_read(resize_rows), _tokens_read(resize_columns))
    sparse, _ = model.prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
    low_res, iou = decode_points(
        model.mask_decoder,
        predictor.features,
        model.prompt_encoder.get_dense_pe(),
        model.prompt_encoder.no_mask_embed.weight,
        sparse,
        multimask_output,
        extent,
    )
    masks = resize_rows[:, : 4 * extent[0]] @ low_res @ resize_columns[:, : 4 * extent[1]].T
    return (masks if return_logits else masks > model.mask_threshold), iou, low_res
