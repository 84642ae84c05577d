"""Phase 1, hello and governance, party side.

The party verifies its own copy of the agreement (signatures, validity window), checks the
requested job against it, checks that its data file is readable and within the declared
maximum set size, and answers with its agreement hash, a fresh nonce for the run key and its
row count, all signed with its Ed25519 key.
"""

from __future__ import annotations

from vfm_flower.agreement import check_set_size
from vfm_flower.party import PartyRuntime, StepReply, StepRequest, new_nonce, step_handler
from vfm_flower.tables import read_party_table


@step_handler("query.hello")
def answer_hello(runtime: PartyRuntime, request: StepRequest) -> StepReply:
    """Check agreement, job and data; answer with hash, nonce and row count."""
    runtime.signed.verify()
    frame = read_party_table(
        runtime.settings.data_path, party=runtime.party, id_columns=runtime.terms.id_columns
    )
    check_set_size(runtime.agreement, runtime.party, len(frame))
    nonce = new_nonce()
    runtime.state.set("hello_nonce", nonce)
    return StepReply(
        party=runtime.party,
        public={
            "agreement_hash": runtime.agreement.terms_hash(),
            "nonce": nonce,
            "rows": int(len(frame)),
            "server_nonce": str(request.params.get("server_nonce", "")),
        },
    )
