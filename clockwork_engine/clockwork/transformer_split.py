"""H_in / L / H_out over an MMDiT transformer (SD3Transformer2DModel): Clockwork's split for
transformers.

At cut k (1 <= k, 2k < the number of joint blocks):
  H_in  = patch + position embedding, time + pooled-text embedding, context embedder, and the
          first k joint blocks; r_in is both streams after them, image tokens first:
          [B, N_img + N_txt, D].
  L     = the middle joint blocks; r_out is what they add to r_in (their residual), in the
          same layout.
  H_out = r_in + r_out, split back into the streams, the last k joint blocks, the final norm
          and projection, and the unpatchify.

The split carries the middle's residual rather than its output, so the identity adaptor
(r_out = the previous step's r_out) reuses the stale residual over the current step's r_in:
what the first-block and DBCache-style caches do. The three parts call the transformer's own
modules, so split(x) equals transformer(x) (tests/test_sd3.py).
"""

from __future__ import annotations

import torch

from clockwork_engine.clockwork.unet_split import HInOutput


class TransformerSplit(torch.nn.Module):
    def __init__(self, model, cut: int = 1):
        super().__init__()
        n = len(model.transformer_blocks)
        if isinstance(cut, bool) or not isinstance(cut, int) or not 1 <= cut or 2 * cut >= n:
            raise ValueError(f"cut must be an int k with 1 <= k and 2k < {n} (the transformer's joint blocks: "
                             f"the first and last k always run), got {cut!r}")
        self.model, self.cut = model, cut
        blocks = list(model.transformer_blocks)
        # Plain lists: the split shares the transformer's blocks, it does not own them.
        self._in_blocks, self._low_blocks, self._out_blocks = blocks[:cut], blocks[cut:n - cut], blocks[n - cut:]
        self.width = model.config.num_attention_heads * model.config.attention_head_dim  # D
        self.r_in_channels = self.r_out_channels = self.width
        self.time_embed_dim = self.width
        self.text_embed_dim = model.config.joint_attention_dim
        self.patch = model.config.patch_size
        self.layout = "tokens"  # r_in / r_out are [B, N, D] token streams (adaptors.py)

    def feature_shape(self, rows: int, text_tokens: int, height: int, width: int) -> tuple[int, int, int]:
        """r_out's shape for `rows` model rows over [rows, C, height, width] latents."""
        return (rows, (height // self.patch) * (width // self.patch) + text_tokens, self.width)

    @staticmethod
    def _run(blocks, hidden, context, emb):
        for block in blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=emb)
        return hidden, context

    def h_in(self, x, t, text, timestep_cond=None, added=None) -> HInOutput:
        """x [B, C, h, w]; t [] or [B]; text [B, T, D_joint]; added: {"pooled_projections": [B, P]}.
        skips: (r_in, h, w): what H_out adds r_out to, and the latent grid it unpatchifies to."""
        m = self.model
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        hidden = m.pos_embed(x).contiguous()  # [B, N_img, D]
        emb = m.time_text_embed(t, added["pooled_projections"])  # [B, D]
        context = m.context_embedder(text)  # [B, T, D]
        hidden, context = self._run(self._in_blocks, hidden, context, emb)
        r_in = torch.cat([hidden, context], dim=1)
        return HInOutput(r_in=r_in, skips=(r_in, *x.shape[-2:]), emb=emb)

    def low(self, r_in, emb, text) -> torch.Tensor:
        n_img = r_in.shape[1] - text.shape[1]
        hidden, context = self._run(self._low_blocks, r_in[:, :n_img], r_in[:, n_img:], emb)
        return torch.cat([hidden, context], dim=1) - r_in

    def h_out(self, r_out, skips, emb, text) -> torch.Tensor:
        m = self.model
        r_in, height, width = skips
        h = r_in + r_out
        n_img = h.shape[1] - text.shape[1]
        hidden, _ = self._run(self._out_blocks, h[:, :n_img], h[:, n_img:], emb)
        hidden = m.proj_out(m.norm_out(hidden, emb))  # [B, N_img, p * p * C]
        height, width = height // self.patch, width // self.patch
        c = m.out_channels
        hidden = hidden.reshape(hidden.shape[0], height, width, self.patch, self.patch, c)
        return torch.einsum("nhwpqc->nchpwq", hidden).reshape(hidden.shape[0], c, height * self.patch,
                                                               width * self.patch)

    def forward(self, x, t, text, timestep_cond=None, added=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The full model: (velocity, r_out)."""
        hin = self.h_in(x, t, text, timestep_cond, added)
        r_out = self.low(hin.r_in, hin.emb, text)
        return self.h_out(r_out, hin.skips, hin.emb, text), r_out
