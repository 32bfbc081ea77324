// Types of @meridian/react.
import type { Context, ReactNode, ReactElement } from "react";
import type { AnyDocumentId, ChangeFn, ChangeOptions, Doc, DocHandle, PeerStates, PresenceState, Repo } from "@meridian/client/repo";

export const RepoContext: Context<Repo | null>;
export function RepoProvider(props: { repo: Repo; children?: ReactNode }): ReactElement;
export function useRepo(): Repo;

export function useDocHandle<T>(id: AnyDocumentId, options: { suspense: true }): DocHandle<T>;
export function useDocHandle<T>(id: AnyDocumentId | undefined, options?: { suspense?: false }): DocHandle<T> | undefined;
export const useHandle: typeof useDocHandle;

export type ChangeDoc<T> = (fn: ChangeFn<T>, options?: ChangeOptions) => void;
export function useDocument<T>(id: AnyDocumentId, options: { suspense: true }): [Doc<T>, ChangeDoc<T>];
export function useDocument<T>(
  id: AnyDocumentId | undefined,
  options?: { suspense?: false },
): [Doc<T>, ChangeDoc<T>] | [undefined, () => void];
export function useDocuments<T>(ids: AnyDocumentId[]): Map<AnyDocumentId, Doc<T>>;

export interface UsePresenceResult<State extends PresenceState> {
  peerStates: PeerStates<State>;
  localState: State | undefined;
  update<Channel extends keyof State>(channel: Channel, value: State[Channel]): void;
  start(config?: { initialState?: State; heartbeatMs?: number; peerTtlMs?: number }): void;
  stop(): void;
}
export function usePresence<State extends PresenceState>(config: {
  handle: DocHandle<unknown> | undefined;
  initialState: State;
  heartbeatMs?: number;
  peerTtlMs?: number;
}): UsePresenceResult<State>;
