"""The seed's import paths of the inference stack and the embedding clients (re-exports of
:mod:`sage.inference`)."""
