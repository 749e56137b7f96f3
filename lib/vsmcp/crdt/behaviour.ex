defmodule Vsmcp.CRDT.Behaviour do
  @moduledoc """
  The contract every CRDT type module implements
  (`Vsmcp.CRDT.Types.GCounter`, `PNCounter`, `ORSet`, `LWWRegister`).

  ## Values

  A CRDT value is an ordinary struct `%Type{node_id: term, state: binary}`:
  `node_id` is the replica that holds it (any term; its canonical bytes are
  the replica id inside the state) and `state` is the CRDT in the versioned
  wire format of `native/vsmcp_crdt_core` (`Crdt::encode`). Values are
  therefore immutable: an old version stays valid after a new one is
  derived, and a value can be stored in ETS, sent to another process or
  node, and round-tripped through `:erlang.term_to_binary/1`.

  A *delta* (the second element of what `mutate/2` returns) is the same
  struct whose `state` holds only the change, so `merge(state, delta)` and
  `merge(state, other_state)` are the same function (the delta-state CRDTs
  of Almeida, Shoker and Baquero). `merge/2` keeps the first argument's
  `node_id`.

  Use `equal?/2` to compare replicated state: two replicas that have seen
  the same operations are `equal?` whatever their node ids and whatever the
  order in which the operations reached them. `==` compares node ids and
  encodings, which may differ between equal states.

  ## Cost

  Semantics live only in Rust. Every call decodes `state`, applies one
  operation and re-encodes: O(size of the state) per call, roughly 20-80 ns
  per state byte. Measured on a 2-core VM (minimum of 200 runs), per call:

  | state                        | bytes  | mutate | merge delta | value  | equal? |
  |------------------------------|--------|--------|-------------|--------|--------|
  | OR-Set, 100 small elements   | 1 KB   | 24 µs  | 23 µs       | 28 µs  | 74 µs  |
  | OR-Set, 1,000 small elements | 12 KB  | 0.23 ms| 0.23 ms     | 0.32 ms| 0.82 ms|
  | OR-Set, 6,000 small elements | 77 KB  | 2.0 ms | 2.0 ms      | 2.1 ms | 12 ms  |
  | G-Counter, 3,000 replicas    | 21 KB  | 1.0 ms | -           | -      | -      |
  | G-Counter, 1 replica         | 15 B   | 1 µs   | -           | -      | -      |

  Calls whose state bytes (both states for `merge` and `equal?`) exceed
  8 KiB run on a dirty CPU scheduler, so normal schedulers are never held
  for more than about a millisecond. For large, hot CRDTs use
  `Vsmcp.CRDT.ContextStore`, which keeps them natively.

  Reading a value (`value/1`, `causal_context/1`) decodes its elements and
  node ids, creating any atom they name; a state received from a peer can
  therefore add atoms to this node, at most those the peer put into it.

  ## Errors

  * Functions that return a CRDT (`mutate/2`, `merge/2` and the named
    mutators such as `increment/2` or `add/2`) return `{:error, reason}`
    when a CRDT argument is not a valid value of the type:
    `:type_mismatch` (a struct of another CRDT type, or a state of another
    kind), `:invalid_argument` (not a CRDT struct, or a term that cannot be
    encoded), `{:invalid_encoding, detail}` / `:unsupported_version`
    (malformed state bytes), `:unsupported_operation` (an operation the type
    does not have) or `{:invalid_amount, n}` (an amount that is not an
    integer in `-(2^63)..2^64-1`, or one that would take a counter entry
    past 2^64 - 1).
  * Query functions (`value/1`, `equal?/2`, `causal_context/1`, and
    `member?/2`, `get/1` where the type has them) raise `ArgumentError` with
    a message naming the problem, because any term could be a legitimate
    result (a register may hold `{:error, x}`; `member?/2` must stay a
    boolean).
  * Arguments with documented guards (an amount that is not a positive
    integer, an unknown option) raise `ArgumentError`.
  """

  @typedoc "A CRDT value or delta: `%Type{node_id: term, state: binary}`."
  @type crdt :: struct()

  @typedoc "See the Errors section of the moduledoc."
  @type reason ::
          :type_mismatch
          | :invalid_argument
          | {:invalid_encoding, String.t()}
          | :unsupported_version
          | :unsupported_operation
          | {:invalid_amount, term()}

  @doc "An empty CRDT held by replica `node_id`."
  @callback new(node_id :: term()) :: crdt

  @doc "Applies `op` as the value's own replica; returns the new value and the delta."
  @callback mutate(crdt, op :: term()) :: {crdt, delta :: crdt} | {:error, reason}

  @doc "Joins a state or a delta into `crdt` (least upper bound)."
  @callback merge(crdt, state_or_delta :: crdt) :: crdt | {:error, reason}

  @doc "The value the CRDT represents."
  @callback value(crdt) :: term()

  @doc "Whether two values hold the same replicated state."
  @callback equal?(crdt, crdt) :: boolean()

  @doc "A summary of the events the value has seen (type-specific map)."
  @callback causal_context(crdt) :: map()
end
