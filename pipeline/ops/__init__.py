"""Operator commands beside the pipeline (`llmpipe dead-letter ...`): each module offers
``register(subparsers)``, and nothing in the pipeline imports them."""
