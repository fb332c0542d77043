"""The EfficientSAM network (Xiong et al., CVPR 2024; Apache-2.0 reference at github.com/yformer/EfficientSAM).

A plain ViT image encoder (no windows, absolute position embedding pretrained at 224 px and resized),
a neck to 256 channels, a prompt encoder that embeds up to `max_points` points (boxes are two corner
points with labels 2 = top-left and 3 = bottom-right; padding points have label -1), and SAM's
two-way-transformer mask decoder producing 3 masks (plus a single-mask token) and IoU predictions.

Module and parameter names mirror the official checkpoints (`efficient_sam_vitt.pt`,
`efficient_sam_vits.pt`) so their state dicts load strictly. Shapes in comments: B images, Q prompts
per image, P points per prompt, C channels, h/w the embedding grid (image_size / patch_size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Point labels of the prompt encoder.
LABEL_PADDING, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


@dataclass
class EfficientSamConfig:
    """Architecture of one EfficientSAM; defaults are EfficientSAM-Ti (`efficient_sam_vitt.pt`)."""

    image_size: int = 1024  # square model input (pixels); images are resized (stretched) to it
    patch_size: int = 16  # ViT patch size; the embedding grid is image_size / patch_size
    encoder_dim: int = 192  # ViT width: 192 = ViT-Ti (EfficientSAM-Ti), 384 = ViT-S (EfficientSAM-S)
    encoder_depth: int = 12  # number of ViT blocks
    encoder_heads: int = 3  # attention heads per ViT block (3 for Ti, 6 for S)
    encoder_mlp_ratio: float = 4.0  # ViT MLP hidden width / encoder_dim
    pretrain_image_size: int = 224  # image size the position embedding was trained at (resized on the fly)
    neck_dim: int = 256  # channels of the image embedding = width of prompt encoder and mask decoder
    decoder_depth: int = 2  # two-way transformer blocks in the mask decoder
    decoder_heads: int = 8  # attention heads in the mask decoder (must divide neck_dim / 2)
    decoder_mlp_dim: int = 2048  # MLP width inside the two-way transformer
    upscaling_dims: list[int] = field(default_factory=lambda: [64, 32])  # channels of each 2x upscaling step
    num_multimask_outputs: int = 3  # masks predicted per prompt (plus one single-mask token)
    iou_head_depth: int = 3  # layers of the IoU prediction MLP (hidden layers = depth - 1, then the output)
    iou_head_hidden_dim: int = 256  # width of the IoU prediction MLP
    max_points: int = 6  # prompts are padded / truncated to this many points (label -1 = padding)
    pixel_mean: list[float] = field(
        default_factory=lambda: [0.485, 0.456, 0.406]
    )  # normalisation of [0,1] RGB
    pixel_std: list[float] = field(
        default_factory=lambda: [0.229, 0.224, 0.225]
    )  # normalisation of [0,1] RGB

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_dim % self.encoder_heads:
            raise ValueError(
                f"encoder_dim {self.encoder_dim} must be divisible by encoder_heads {self.encoder_heads}"
            )
        if (self.neck_dim // 2) % self.decoder_heads:
            raise ValueError(
                f"decoder_heads {self.decoder_heads} must divide neck_dim / 2 = {self.neck_dim // 2}"
            )
        if self.num_multimask_outputs < 1 or self.iou_head_depth < 2 or not self.upscaling_dims:
            raise ValueError(
                "need num_multimask_outputs >= 1, iou_head_depth >= 2 and at least one upscaling dim"
            )
        if self.max_points < 2:
            raise ValueError(f"max_points must be >= 2 (a box takes two points), got {self.max_points}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 values (R, G, B)")

    @property
    def grid_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 px / patch 16)."""
        return self.image_size // self.patch_size

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution mask logits (256 for the official models)."""
        return self.grid_size * 2 ** len(self.upscaling_dims)


VARIANTS = {
    "vitt": {"encoder_dim": 192, "encoder_heads": 3},  # EfficientSAM-Ti, 10.2M parameters
    "vits": {"encoder_dim": 384, "encoder_heads": 6},  # EfficientSAM-S, 26.4M parameters
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """`num_layers` Linear+activation layers of width `hidden_dim`, then a Linear to `output_dim` (`fc`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        widths = [input_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(widths[i], widths[i + 1]), nn.GELU()) for i in range(num_layers)
        )
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


# ---- image encoder ----------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, dim/heads)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """(B, 3, S, S) normalised pixels -> (B, neck_dim, S/patch, S/patch) image embedding."""

    def __init__(self, config: EfficientSamConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_embed = PatchEmbed(config.patch_size, config.encoder_dim)
        pretrain_grid = config.pretrain_image_size // config.patch_size
        # one extra position for the class token used in pretraining (dropped at use)
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid + 1, config.encoder_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(config.encoder_dim, config.encoder_heads, config.encoder_mlp_ratio)
            for _ in range(config.encoder_depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(config.encoder_dim, config.neck_dim, kernel_size=1, bias=False),
            LayerNorm2d(config.neck_dim),
            nn.Conv2d(config.neck_dim, config.neck_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.neck_dim),
        )

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, grid_h, grid_w, dim): the pretrained grid of position embeddings, resized bicubically."""
        table = self.pos_embed[:, 1:]
        side = math.isqrt(table.shape[1])
        table = table.reshape(1, side, side, -1)
        if (side, side) == (grid_h, grid_w):
            return table
        resized = F.interpolate(
            table.permute(0, 3, 1, 2), size=(grid_h, grid_w), mode="bicubic", align_corners=False
        )
        return resized.permute(0, 2, 3, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"encoder input must be {self.image_size}x{self.image_size}, got {tuple(pixels.shape)}"
            )
        x = self.patch_embed(pixels).permute(0, 2, 3, 1)  # (B, h, w, dim)
        batch, grid_h, grid_w, dim = x.shape
        x = (x + self.position_embedding(grid_h, grid_w)).reshape(batch, grid_h * grid_w, dim)
        for block in self.blocks:
            x = block(x)
        return self.neck(x.reshape(batch, grid_h, grid_w, dim).permute(0, 3, 1, 2))


# ---- prompt encoder ---------------------------------------------------------------------------------


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] with a fixed random Gaussian frequency matrix."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_features))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0, 1] -> (..., 2 * num_features)."""
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """(C, height, width) encoding of the centres of a height x width grid."""
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(height, device=matrix.device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=matrix.device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self.encode(coords.to(matrix.dtype)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Points (N, P, 2) in model-input pixels + labels (N, P) -> sparse embeddings (N, P, C)."""

    def __init__(self, config: EfficientSamConfig):
        super().__init__()
        self.image_size = config.image_size
        self.grid_size = config.grid_size
        self.pe_layer = PositionEmbeddingRandom(config.neck_dim // 2)
        self.invalid_points = nn.Embedding(1, config.neck_dim)
        self.point_embeddings = nn.Embedding(1, config.neck_dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, config.neck_dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, config.neck_dim)

    def dense_position_embedding(self) -> torch.Tensor:
        """(1, C, h, w) position encoding of the image embedding grid."""
        return self.pe_layer.grid(self.grid_size, self.grid_size).unsqueeze(0)

    def forward(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        coords = (points + 0.5) / self.image_size  # pixel centres, normalised to [0, 1]
        embedding = self.pe_layer.encode(coords.to(self.pe_layer.positional_encoding_gaussian_matrix.dtype))
        for label, table in (
            (LABEL_PADDING, self.invalid_points),
            (LABEL_POSITIVE, self.point_embeddings),
            (LABEL_BOX_TOP_LEFT, self.bbox_top_left_embeddings),
            (LABEL_BOX_BOTTOM_RIGHT, self.bbox_bottom_right_embeddings),
        ):
            embedding = embedding + table.weight[:, None, :] * (labels == label)[:, :, None]
        return embedding


# ---- mask decoder -----------------------------------------------------------------------------------


class TwoWayAttention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate`."""

    def __init__(self, dim: int, heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        )
        batch, heads, tokens, width = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * width))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention (post-norm)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = TwoWayAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TwoWayAttention(dim, heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dim, num_layers=1)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TwoWayAttention(dim, heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if not self.skip_first_layer_pe:
            queries = queries + query_pe
        queries = self.norm1(queries + self.self_attn(queries, queries, queries))
        queries = self.norm2(
            queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys)
        )
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, config: EfficientSamConfig):
        super().__init__()
        dim = config.neck_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                dim, config.decoder_heads, config.decoder_mlp_dim, skip_first_layer_pe=i == 0
            )
            for i in range(config.decoder_depth)
        )
        self.final_attn_token_to_image = TwoWayAttention(dim, config.decoder_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image, image_pe (N, C, h, w); tokens (N, T, C) -> tokens (N, T, C), image tokens (N, h*w, C)."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = self.norm_final_attn(
            queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        )
        return queries, keys


class MaskDecoder(nn.Module):
    """Image embedding + sparse prompt embeddings -> mask logits at 4x the grid + IoU predictions."""

    def __init__(self, config: EfficientSamConfig):
        super().__init__()
        dim = config.neck_dim
        self.num_multimask_outputs = config.num_multimask_outputs
        self.num_mask_tokens = config.num_multimask_outputs + 1 if config.num_multimask_outputs > 1 else 1
        self.transformer = TwoWayTransformer(config)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        widths = [dim] + list(config.upscaling_dims)
        self.final_output_upscaling_layers = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=2, stride=2),
                nn.GroupNorm(1, widths[i + 1]) if i < len(widths) - 2 else nn.Identity(),
                nn.GELU(),
            )
            for i in range(len(widths) - 1)
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLPBlock(dim, dim, widths[-1], num_layers=2) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLPBlock(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, num_layers=config.iou_head_depth - 1
        )

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, prompts: torch.Tensor, multimask: bool = True
    ):
        """image (N, C, h, w), image_pe (1, C, h, w), prompts (N, P, C) -> masks (N, M, 4h, 4w), iou (N, M)."""
        count = prompts.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(count, -1, -1), prompts], dim=1)
        hs, src = self.transformer(image, image_pe.expand(count, -1, -1, -1), tokens)
        _, channels, height, width = image.shape
        upscaled = src.transpose(1, 2).reshape(count, channels, height, width)
        for layer in self.final_output_upscaling_layers:
            upscaled = layer(upscaled)
        mask_tokens = hs[:, 1 : 1 + self.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, up_channels, up_h, up_w = upscaled.shape
        masks = (hyper @ upscaled.reshape(count, up_channels, up_h * up_w)).reshape(count, -1, up_h, up_w)
        iou = self.iou_prediction_head(hs[:, 0])
        if multimask and self.num_multimask_outputs > 1:
            return masks[:, 1:], iou[:, 1:]
        return masks[:, :1], iou[:, :1]


class EfficientSam(nn.Module):
    """The full model. `embed` runs the image side once; `decode` prompts it as often as needed."""

    def __init__(self, config: EfficientSamConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(config)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, S, S) normalised (bilinear stretch to the model size)."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        return (images - self.pixel_mean) / self.pixel_std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> image embeddings (B, C, h, w)."""
        return self.image_encoder(self.preprocess(images))

    def to_model_coords(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(..., 2) x, y in pixels of a height x width image -> pixels of the model input (negatives stay -1)."""
        scale = points.new_tensor([self.config.image_size / width, self.config.image_size / height])
        return torch.where(points >= 0, points * scale, torch.full_like(points, -1.0))

    def decode(
        self, embeddings: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """embeddings (B, C, h, w); points (B, Q, P, 2) in model-input pixels; labels (B, Q, P).

        Returns mask logits (B, Q, M, 4h, 4w) and IoU predictions (B, Q, M), M = 3 (or 1 if not multimask).
        """
        batch, queries, num_points, _ = points.shape
        limit = self.config.max_points
        if num_points > limit:
            points, labels = points[:, :, :limit], labels[:, :, :limit]
        elif num_points < limit:
            points = F.pad(points, (0, 0, 0, limit - num_points), value=-1.0)
            labels = F.pad(labels, (0, limit - num_points), value=LABEL_PADDING)
        prompts = self.prompt_encoder(
            points.reshape(batch * queries, limit, 2), labels.reshape(batch * queries, limit)
        )
        image = embeddings.repeat_interleave(queries, dim=0)  # (B*Q, C, h, w)
        masks, iou = self.mask_decoder(
            image, self.prompt_encoder.dense_position_embedding(), prompts.to(image.dtype), multimask
        )
        return masks.reshape(batch, queries, *masks.shape[1:]), iou.reshape(batch, queries, -1)

    def forward(
        self, images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, multimask: bool = True
    ):
        """images (B, 3, H, W) in [0, 1]; points (B, Q, P, 2) in image pixels -> logits at (H, W), IoU."""
        height, width = images.shape[-2:]
        logits, iou = self.decode(
            self.embed(images), self.to_model_coords(points, height, width), labels, multimask
        )
        upsampled = F.interpolate(logits.flatten(0, 1), (height, width), mode="bicubic", align_corners=False)
        return upsampled.reshape(*logits.shape[:3], height, width), iou
