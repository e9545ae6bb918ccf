"""H_in / L / H_out over a transformer's block stack: Clockwork's split for SD3's MMDiT
(SD3Transformer2DModel) and Flux (FluxTransformer2DModel: double-stream, then single-stream
blocks, which take and return the two streams alike).

At cut k (0 <= k, 2k < the number of blocks):
  H_in  = the embeddings (SD3: patch + position, time + pooled text, context; Flux: the packed
          latents' and the context's projections, time [+ guidance] + pooled text, the rotary
          position embedding) and the first k blocks; r_in is both streams after them, image
          tokens first: [B, N_img + N_txt, D]. At cut 0, r_in is the embeddings themselves and L is
          the whole stack: an adaptor step then skips every block, as MagCache's skipped steps do.
  L     = the middle blocks; r_out is what they add to r_in (their residual), in the same layout.
  H_out = r_in + r_out, split back into the streams, the last k blocks, the final norm and
          projection, and the unpatchify (SD3) or unpack (Flux).

The split carries the middle's residual rather than its output, so the identity adaptor
(r_out = the previous step's r_out) reuses the stale residual over the current step's r_in:
what the first-block and DBCache-style caches do. The three parts call the transformer's own
modules, so split(x) equals the transformer (tests/test_sd3.py, tests/test_flux.py).
"""

from __future__ import annotations

import torch

from clockwork_engine.clockwork.unet_split import HInOutput
from clockwork_engine.models import flux_packing as flux


class TransformerSplit(torch.nn.Module):
    def __init__(self, model, cut: int = 1):
        super().__init__()
        blocks = list(model.transformer_blocks) + list(getattr(model, "single_transformer_blocks", []))
        n = len(blocks)
        if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut or 2 * cut >= n:
            raise ValueError(f"cut must be an int k with 0 <= k and 2k < {n} (the transformer's blocks: "
                             f"the first and last k always run), got {cut!r}")
        self.model, self.cut = model, cut
        # Plain lists: the split shares the transformer's blocks, it does not own them.
        self._in_blocks, self._low_blocks, self._out_blocks = blocks[:cut], blocks[cut:n - cut], blocks[n - cut:]
        self.width = model.config.num_attention_heads * model.config.attention_head_dim  # D
        self.r_in_channels = self.r_out_channels = self.time_embed_dim = self.width
        self.text_embed_dim = model.config.joint_attention_dim
        self.patch = getattr(model.config, "patch_size", 1) if self._sd3 else 2  # Flux: the 2x2 packing
        self.layout = "tokens"  # r_in / r_out are [B, N, D] token streams (adaptors.py)

    @property
    def _sd3(self) -> bool:
        return hasattr(self.model, "pos_embed") and not hasattr(self.model, "x_embedder")

    def feature_shape(self, rows: int, text_tokens: int, height: int, width: int) -> tuple[int, int, int]:
        """r_out's shape for `rows` model rows over [rows, C, height, width] latents."""
        return (rows, (height // self.patch) * (width // self.patch) + text_tokens, self.width)

    @staticmethod
    def _run(blocks, hidden, context, emb, kw):
        for block in blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=emb, **kw)
        return hidden, context

    def _embed(self, x, t, text, added):
        """(image tokens [B, N, D], context [B, T, D], emb [B, D], the blocks' extra inputs)."""
        m = self.model
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if self._sd3:
            return (m.pos_embed(x).contiguous(), m.context_embedder(text),
                    m.time_text_embed(t, added["pooled_projections"]), {})
        hidden = m.x_embedder(flux.pack(x))
        t = (t / 1000).to(hidden.dtype) * 1000  # as FluxPipeline passes it and the transformer scales it back
        guidance = added.get("guidance")
        pooled = added["pooled_projections"]
        emb = m.time_text_embed(t, pooled) if guidance is None else \
            m.time_text_embed(t, guidance.to(hidden.dtype) * 1000, pooled)
        ids = torch.cat([text.new_zeros(text.shape[1], 3), flux.image_ids(*x.shape[-2:], x.device, x.dtype)])
        return hidden, m.context_embedder(text), emb, {"image_rotary_emb": m.pos_embed(ids)}

    def h_in(self, x, t, text, timestep_cond=None, added=None) -> HInOutput:
        """x [B, C, h, w]; t [] or [B]; text [B, T, D_joint]; added: the family's (pooled
        projections, Flux-dev's guidance). skips: (r_in, h, w, the blocks' extra inputs)."""
        hidden, context, emb, kw = self._embed(x, t, text, added)
        hidden, context = self._run(self._in_blocks, hidden, context, emb, kw)
        r_in = torch.cat([hidden, context], dim=1)
        return HInOutput(r_in=r_in, skips=(r_in, *x.shape[-2:], kw), emb=emb)

    def low(self, r_in, emb, text, skips=None) -> torch.Tensor:
        n_img = r_in.shape[1] - text.shape[1]
        kw = skips[3] if skips is not None else {}
        hidden, context = self._run(self._low_blocks, r_in[:, :n_img], r_in[:, n_img:], emb, kw)
        if context is None:  # cut 0 on SD3: the last joint block returns no text stream (context_pre_only)
            context = r_in[:, n_img:]
        return torch.cat([hidden, context], dim=1) - r_in

    def h_out(self, r_out, skips, emb, text) -> torch.Tensor:
        m = self.model
        r_in, height, width, kw = skips
        h = r_in + r_out
        n_img = h.shape[1] - text.shape[1]
        hidden, _ = self._run(self._out_blocks, h[:, :n_img], h[:, n_img:], emb, kw)
        hidden = m.proj_out(m.norm_out(hidden, emb))  # [B, N_img, p * p * C]
        if not self._sd3:
            return flux.unpack(hidden, height, width)
        hh, ww, c = height // self.patch, width // self.patch, m.out_channels
        hidden = hidden.reshape(hidden.shape[0], hh, ww, self.patch, self.patch, c)
        return torch.einsum("nhwpqc->nchpwq", hidden).reshape(hidden.shape[0], c, height, width)

    def output_tokens(self, r_in, r_out, emb, n_img: int) -> torch.Tensor:
        """At cut 0, H_out before the unpatchify / unpack: [B, N, D] streams -> the velocity's
        image tokens [B, n_img, p * p * C] (what an adaptor's error is worth after the final
        norm, which r_out's L2 does not see: `clockwork distill --loss-on output`)."""
        if self.cut:
            raise ValueError(f"the output tokens follow from r_out alone at cut 0 (this split is at cut {self.cut})")
        return self.model.proj_out(self.model.norm_out((r_in + r_out)[:, :n_img], emb))

    def forward(self, x, t, text, timestep_cond=None, added=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The full model: (velocity, r_out)."""
        hin = self.h_in(x, t, text, timestep_cond, added)
        r_out = self.low(hin.r_in, hin.emb, text, hin.skips)
        return self.h_out(r_out, hin.skips, hin.emb, text), r_out
