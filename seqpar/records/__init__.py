"""The one owner of the run-record layout: file names (`layout`), atomic writing (`writer`) and
reading back (`reader`). Nothing outside this package spells a run directory's file names.
No JAX import here: `seqpar compare` and `seqpar plot` start fast."""
