defmodule Vsmcp.CRDT.Error do
  @moduledoc """
  Raised by the `!` functions of `Vsmcp.CRDT.ContextStore`
  (`Vsmcp.CRDT.ContextStore.get!/2`, `Vsmcp.CRDT.ContextStore.update!/4`)
  where the plain function returns `{:error, reason}`.

  Fields: `:reason`, the same term the plain function returns (see
  "Errors" in `Vsmcp.CRDT.ContextStore`: `:not_found`, `:noproc`,
  `{:unsupported_operation, type, op}`, `{:storage_error, message}`, ...),
  `:operation` (`:get` or `:update`) and `:id`.

      iex> error = %Vsmcp.CRDT.Error{reason: :not_found, operation: :get, id: :visits}
      iex> Exception.message(error)
      "get of :visits failed: :not_found"
  """

  defexception [:reason, :operation, :id]

  @type t :: %__MODULE__{reason: term(), operation: :get | :update, id: term()}

  @impl true
  def message(%__MODULE__{reason: reason, operation: operation, id: id}) do
    "#{operation} of #{inspect(id)} failed: #{inspect(reason)}"
  end
end
