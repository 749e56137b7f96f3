defmodule Vsmcp.CRDT.BinSetupTest do
  @moduledoc """
  `bin/setup`, the first step of the README's `bin/demo` and `bash .ci/run`,
  on a copy of the repository: with every dependency vendored in
  `../shared/vendor` it must not touch Hex; without them (any user's machine)
  it installs Hex and fetches the dependencies, as `mix.exs` then takes them
  from Hex.

  The script runs for real, with `dpkg`, `rustup`, `epmd`, `apt-get`, `sudo`
  and `mix` replaced by stubs on `PATH` that record their arguments; `elixir`
  is the real one.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  @repo_dir Path.expand("../..", __DIR__)
  # Every dependency mix.exs names.
  @vendored Enum.map(Mix.Project.config()[:deps], &elem(&1, 0))

  # Each stub appends "<name> <args>" to $STUB_LOG and succeeds. `mix archive`
  # lists $STUB_ARCHIVES (installed archives); `rustup component list`
  # reports both components installed; `dpkg -s` reports every package
  # installed.
  @stub """
  #!/usr/bin/env bash
  echo "$(basename "$0") $*" >> "$STUB_LOG"
  case "$(basename "$0") $1" in
    "mix archive") printf '%s\\n' "$STUB_ARCHIVES" ;;
    "rustup component") printf 'rustfmt-x86_64-unknown-linux-gnu\\nclippy-x86_64-unknown-linux-gnu\\n' ;;
  esac
  exit 0
  """

  # A copy of what bin/setup reads, in `root/repo`, with `vendor` (a list of
  # dependency names) present in `root/shared/vendor`.
  defp checkout!(vendor) do
    root = tmp_dir!("vsmcp_crdt_setup")
    repo = Path.join(root, "repo")

    for path <- ["bin/setup", "mix.exs"] do
      File.mkdir_p!(Path.dirname(Path.join(repo, path)))
      File.cp_r!(Path.join(@repo_dir, path), Path.join(repo, path))
    end

    for name <- vendor, do: File.mkdir_p!(Path.join([root, "shared/vendor", to_string(name)]))

    stubs = Path.join(root, "stubs")
    File.mkdir_p!(stubs)

    for name <- ~w(dpkg rustup epmd apt-get sudo mix) do
      File.write!(Path.join(stubs, name), @stub)
      File.chmod!(Path.join(stubs, name), 0o755)
    end

    %{root: root, repo: repo, stubs: stubs}
  end

  # Runs bin/setup; returns the recorded stub calls.
  defp setup!(%{root: root, repo: repo, stubs: stubs}, archives \\ "") do
    log = Path.join(root, "calls.log")
    File.write!(log, "")
    elixir_dir = Path.dirname(System.find_executable("elixir"))

    {output, status} =
      System.cmd("bash", [Path.join(repo, "bin/setup")],
        cd: root,
        env: [
          {"PATH", Enum.join([stubs, elixir_dir, "/usr/bin", "/bin"], ":")},
          # No ~/.cargo/bin in front of the stubs; Mix's home is the test's.
          {"HOME", root},
          {"MIX_HOME", Path.join(root, "mix_home")},
          {"MIX_ENV", nil},
          {"STUB_LOG", log},
          {"STUB_ARCHIVES", archives}
        ],
        stderr_to_stdout: true
      )

    assert status == 0, "bin/setup failed:\n#{output}"
    log |> File.read!() |> String.split("\n", trim: true)
  end

  defp mix_calls(calls), do: for("mix " <> args <- calls, do: args)

  test "with every dependency in ../shared/vendor, nothing from Hex" do
    checkout = checkout!(@vendored)
    calls = setup!(checkout)

    assert mix_calls(calls) == []
    # The toolchain checks still ran.
    assert Enum.any?(calls, &String.starts_with?(&1, "dpkg -s elixir"))
    refute Enum.any?(calls, &String.starts_with?(&1, "apt-get"))
  end

  test "without ../shared/vendor: installs Hex, then fetches the dependencies" do
    calls = checkout!([]) |> setup!() |> mix_calls()
    assert calls == ["archive", "local.hex --force", "deps.get"]
  end

  test "with only some dependencies vendored, the others come from Hex" do
    calls = checkout!([:telemetry]) |> setup!() |> mix_calls()
    assert calls == ["archive", "local.hex --force", "deps.get"]
  end

  test "Hex already installed: only fetches the dependencies" do
    calls = checkout!([]) |> setup!("* hex-2.0.6") |> mix_calls()
    assert calls == ["archive", "deps.get"]
  end
end
