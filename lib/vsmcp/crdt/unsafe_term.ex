defmodule Vsmcp.CRDT.UnsafeTerm do
  @moduledoc """
  What a stored term that cannot be decoded safely reads as.

  A store started with `sync_opts: [decode: :safe]` (for peers across a
  trust boundary, see the distributed sync guide) decodes every id, set
  element and register value it returns with existing atoms only and with
  `binary_to_term(_, [:safe])` rules, so nothing a peer sends can create an
  atom in this VM. A term that needs more (an atom unknown here, a function,
  a pid or reference of a node this VM never knew) reads as this struct:
  `bytes` is its canonical encoding, opaque to the caller. Remote ids in
  `{:changed, id, :remote}` notifications of every store read the same way.

  It is a handle on the original term, valid in the VM that read it:
  passed back as an id or element (`get/2`, `remove/3`, `member?/3`,
  `delete/2`, ...) it names exactly the term it stands for, so an unwanted
  element can be removed and an id deleted without ever decoding it.
  `tag` (a keyed hash under a key drawn when the library loads) proves
  that; a struct of this shape made any other way (by hand, by a peer, or
  read in another VM) is an ordinary map, as an id or element.

      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> {:ok, s} = Vsmcp.CRDT.ContextStore.start_link(storage_opts: [data_dir: dir], sync_opts: [decode: :safe])
      iex> :ok = Vsmcp.CRDT.ContextStore.create(s, :tags, :or_set)
      iex> Vsmcp.CRDT.ContextStore.add(s, :tags, {:known, "atoms read back as usual"})
      {:ok, MapSet.new([{:known, "atoms read back as usual"}])}
      iex> Vsmcp.CRDT.ContextStore.get(s, %Vsmcp.CRDT.UnsafeTerm{bytes: <<255>>, tag: "made by hand"})
      {:error, :not_found}
      iex> Vsmcp.CRDT.ContextStore.stop(s)
      :ok
  """

  @enforce_keys [:bytes, :tag]
  defstruct [:bytes, :tag]

  @type t :: %__MODULE__{bytes: binary(), tag: binary()}
end
