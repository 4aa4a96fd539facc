"""Accuracy: the lmms-eval recipe against ``earlytom-serve`` (README.md), the request-body injector
it uses (``lmms_eval_earlytom``) and a local plumbing smoke run (``smoke``)."""
