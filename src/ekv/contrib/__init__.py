"""Integrations of ekv with frameworks; each lives in its own module and imports its framework
there, so ``import ekv`` never needs one (``ekv.contrib.django`` needs the ``django`` extra)."""
