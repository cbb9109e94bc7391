"""filter: the paper's global and pair filtering over score columns, into DPO pairs."""
